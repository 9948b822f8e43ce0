//! The super node's media relay table: forwarding end-to-end-encrypted packets between two
//! devices that cannot reach each other directly (the role TURN plays elsewhere).
//!
//! Pure logic, no I/O. The node facade tells the table which transport addresses belong to
//! which authenticated device (every Noise session the super node holds, as sessions come,
//! move with a NAT rebinding and go), asks it to allocate channels when a device requests one,
//! and hands it every relayed frame that arrives; the table answers where the frame goes.
//!
//! | kind | method |
//! |---|---|
//! | input | [`Relay::session_up`], [`Relay::session_moved`], [`Relay::session_down`] (the facade's sessions) |
//! | input | [`Relay::forward`] (a relayed frame arrived: returns where it goes) |
//! | input | [`Relay::handle_timeout`] (idle channels expire) |
//! | command | [`Relay::allocate`], [`Relay::release`] (on behalf of a party) |
//! | output | the return values (a frame to send, [`Released`] parties to tell), [`Relay::poll_timeout`] |
//! | getters | [`Relay::stats`], [`Relay::channels`] |
//!
//! Channels released by the table itself ([`Relay::session_down`], [`Relay::handle_timeout`],
//! a session address taken over by another device) come back as [`Released`] values naming
//! the party to tell; the facade sends them the news.
//!
//! # Wire format
//!
//! A relayed frame is one UDP datagram, or one length-prefixed frame on a TCP stream (the
//! prefix is the stream's framing, added and removed by the facade, and not part of the frame):
//!
//! ```text
//! +------+--------------------------------+------------------------------+
//! | 0x71 | D | channel (31 bits), BE u32  | inner packet (opaque)        |
//! +------+--------------------------------+------------------------------+
//!   1 B     4 B                              any length up to the limit
//! ```
//!
//! The first byte is [`RELAY_MAGIC`] (`0x70 | version 1`, the relay class of
//! [`natter_core::wire::classify`]). `D` is the direction: 0 when a party sends the frame to
//! the relay, 1 when the relay sends it to a party. Channel ids are 31-bit, nonzero, random
//! (drawn from the configured seed) and unique among live channels. The relay forwards a
//! frame by setting `D` and sending the same bytes to the other party.
//!
//! A frame shorter than [`HEADER_LEN`], longer than [`RelayConfig::max_frame`], with another
//! first byte or with `D` already set is dropped as malformed; a frame for a channel that does
//! not exist, or from an address that is not a session of one of the channel's two devices,
//! is dropped too. Each kind is counted in [`RelayStats`]; nothing here panics on input.
//!
//! # Why the relay cannot be abused
//!
//! * **No message names a destination.** A channel joins two authenticated devices, and a
//!   frame on it can only go to the other one, at an address of a Noise session that device
//!   holds with this super node. The relay can never be pointed at a third party, so it cannot
//!   reflect traffic at a victim.
//! * **No amplification.** The output is the input with one bit flipped: the same length,
//!   exactly one packet out per packet in, never more.
//! * **Only session addresses.** A frame is accepted only from a registered session address
//!   of one of the channel's parties, so knowing (or guessing) a channel id is not enough to
//!   inject traffic; and a party's sessions are authenticated, so a spoofed source address
//!   is either not registered or belongs to that party anyway.
//! * **Opaque payload.** The inner packet is the two devices' end-to-end encrypted session
//!   packet; the super node cannot read or alter it undetected, and does not try.
//! * **Bounded cost.** Each user (all of its devices together) may hold at most
//!   [`RelayConfig::max_channels_per_user`] channels it asked for, at most
//!   [`RelayConfig::max_channels_per_pair`] of them to any one peer device, and send at most
//!   [`RelayConfig::rate_per_user`] bytes per second through the relay (a token bucket of
//!   [`RelayConfig::burst`] bytes, charged to the user of the device that sends); the table
//!   holds at most [`RelayConfig::max_channels`].
//! * **No quota denial.** A channel counts against the quota of the user who asked for it
//!   only, never the peer's: however many channels other users open to a device, its user can
//!   still open its own (until the table is full). The per-pair cap keeps one user from piling
//!   channels onto one device.
//!
//! # Where frames go
//!
//! Each leg of a channel remembers the session address its party last sent a valid frame from,
//! and frames for that party go there; until it has sent one, they go to its most recently
//! registered session. A device holding a TCP session and later a UDP session hears on
//! whichever it last used.
//!
//! # Cost
//!
//! [`Relay::forward`] does two hash lookups (the channel, the sender's session), rarely a third
//! (a party that has not sent yet), and one allocation with one copy: the output [`Bytes`].
//! Idle channels are found by a scan in [`Relay::handle_timeout`], at most once per second
//! whatever the traffic, never per frame.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use natter_core::crypto::{DeviceId, UserName};
use natter_core::rng::Rng;
use natter_core::sansio::Destination;
use natter_core::wire::{MAX_DATAGRAM, PROTOCOL_VERSION, RELAY_BASE};

/// First byte of every relayed frame: `0x70 | version` (`0x71`).
pub const RELAY_MAGIC: u8 = RELAY_BASE | PROTOCOL_VERSION;

/// Bytes before the inner packet: the first byte and the channel word.
pub const HEADER_LEN: usize = 5;

/// The direction bit of the channel word: set on frames the relay sends to a party.
pub const TO_PARTY: u32 = 1 << 31;

/// Idle channels are looked for at most this often.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Settings of the relay table.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most live channels (default 10,000).
    pub max_channels: usize,
    /// Most live channels a user asked for, over all its devices (default 8). Channels other
    /// users asked for to one of its devices do not count: one user cannot use up another's
    /// quota.
    pub max_channels_per_user: usize,
    /// Most live channels a user asked for to one peer device, over all the user's devices
    /// (default 4): one user cannot pile channels onto one device.
    pub max_channels_per_pair: usize,
    /// Bytes per second a user's devices together may send through the relay (default 64,000:
    /// a few voice calls' worth).
    pub rate_per_user: u64,
    /// Bytes a user may send at once after a quiet spell: the token bucket's depth (default
    /// 128,000, two seconds at the default rate). A frame longer than this never passes.
    pub burst: u64,
    /// A channel nobody sent a frame on for this long is released (default 60 s).
    pub idle_timeout: Duration,
    /// Longest frame relayed, header included (default 1,205: the largest Natter datagram
    /// plus the relay header). Longer frames are dropped as malformed, so a frame arriving
    /// on a stream never becomes an oversized datagram.
    pub max_frame: usize,
    /// Randomness for channel ids.
    pub seed: [u8; 32],
}

impl RelayConfig {
    /// Defaults with the given randomness.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            max_channels: 10_000,
            max_channels_per_user: 8,
            max_channels_per_pair: 4,
            rate_per_user: 64_000,
            burst: 128_000,
            idle_timeout: Duration::from_secs(60),
            max_frame: MAX_DATAGRAM + HEADER_LEN,
            seed,
        }
    }
}

/// Why a channel was not allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RelayRefusal {
    /// The other device has no session with this super node.
    #[error("the peer device has no session with this super node")]
    UnknownPeer,
    /// The requester's user already holds [`RelayConfig::max_channels_per_user`] channels it
    /// asked for, or [`RelayConfig::max_channels_per_pair`] to this peer device.
    #[error("relay channel quota reached")]
    Quota,
    /// The table holds [`RelayConfig::max_channels`] channels.
    #[error("relay full")]
    Full,
    /// Both parties are the same device.
    #[error("a device cannot relay to itself")]
    SelfRelay,
    /// The request did not come from a session registered with the relay (a facade bug: every
    /// session should be registered with [`Relay::session_up`]).
    #[error("the requester has no registered session")]
    NoSession,
}

impl RelayRefusal {
    /// The reason's number on the wire (never reused).
    pub fn code(&self) -> u8 {
        match self {
            Self::UnknownPeer => 1,
            Self::Quota => 2,
            Self::Full => 3,
            Self::SelfRelay => 4,
            Self::NoSession => 5,
        }
    }

    /// The reason with this wire number, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::UnknownPeer,
            2 => Self::Quota,
            3 => Self::Full,
            4 => Self::SelfRelay,
            5 => Self::NoSession,
            _ => return None,
        })
    }
}

/// An authenticated device, as one of its sessions proved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Party {
    /// The device.
    pub device: DeviceId,
    /// Its user.
    pub user: UserName,
}

/// A channel allocated by [`Relay::allocate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The channel id (31 bits, nonzero), for both parties.
    pub channel: u32,
    /// Where to offer the channel to the peer: its most recently registered session.
    pub peer: Destination,
    /// Who asked, to name in the offer.
    pub requester: Party,
}

/// Why a channel went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// The other party released it ([`Relay::release`]).
    Closed,
    /// The other party's last session with this super node went down.
    PartyGone,
    /// Nobody sent a frame on it for [`RelayConfig::idle_timeout`].
    Idle,
}

/// A channel the relay no longer serves, and a party to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The channel.
    pub channel: u32,
    /// The party's best destination (where frames for it went last).
    pub notify: Destination,
    /// Why.
    pub reason: ReleaseReason,
}

/// Counters of the relay table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Frames forwarded.
    pub relayed_packets: u64,
    /// Bytes forwarded (frames whole, header included; out equals in).
    pub relayed_bytes: u64,
    /// Frames dropped for their shape: length, first byte, direction bit.
    pub dropped_malformed: u64,
    /// Frames dropped because their channel does not exist.
    pub dropped_unknown_channel: u64,
    /// Frames dropped because they came from an address that is not a session of one of the
    /// channel's parties.
    pub dropped_not_party: u64,
    /// Frames dropped because the sender's user was over its rate.
    pub dropped_rate: u64,
    /// Channels allocated.
    pub allocated: u64,
    /// Allocations refused: [`RelayRefusal::UnknownPeer`].
    pub refused_unknown_peer: u64,
    /// Allocations refused: [`RelayRefusal::Quota`].
    pub refused_quota: u64,
    /// Allocations refused: [`RelayRefusal::Full`].
    pub refused_full: u64,
    /// Allocations refused: [`RelayRefusal::SelfRelay`].
    pub refused_self: u64,
    /// Allocations refused: [`RelayRefusal::NoSession`].
    pub refused_no_session: u64,
    /// Channels released by a party or because a party's last session went down.
    pub released: u64,
    /// Channels released because they were idle.
    pub expired: u64,
}

impl RelayStats {
    /// Every refused allocation, whatever the reason.
    pub fn refused(&self) -> u64 {
        self.refused_unknown_peer
            + self.refused_quota
            + self.refused_full
            + self.refused_self
            + self.refused_no_session
    }
}

/// A user's share of the relay: its rate bucket and channel count.
#[derive(Debug)]
struct UserEntry {
    name: UserName,
    /// Registered devices of this user.
    devices: usize,
    /// Live channels this user asked for (the channels whose first leg is one of its
    /// devices), counted against [`RelayConfig::max_channels_per_user`].
    channels: usize,
    /// Token bucket, in byte-nanoseconds (bytes × 10⁹): refills exactly, with no rounding
    /// drift however often it is touched.
    tokens: u128,
    /// When the bucket was last refilled (`None`: full, never used).
    refilled: Option<Instant>,
}

impl UserEntry {
    /// Take `bytes` from the bucket at `now`, if they are there.
    fn take(&mut self, now: Instant, bytes: usize, rate: u64, burst: u64) -> bool {
        let cap = u128::from(burst) * NANOS_PER_SEC;
        match self.refilled {
            None => self.tokens = cap,
            Some(at) => {
                let elapsed = now.saturating_duration_since(at).as_nanos();
                self.tokens = cap.min(
                    self.tokens
                        .saturating_add(elapsed.saturating_mul(u128::from(rate))),
                );
            }
        }
        if self.refilled.is_none_or(|at| now > at) {
            self.refilled = Some(now);
        }
        let cost = bytes as u128 * NANOS_PER_SEC;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// A registered device.
#[derive(Debug)]
struct DeviceEntry {
    /// Its user's slot in [`Relay::users`].
    user: usize,
    /// Its session destinations, oldest registration first.
    sessions: Vec<Destination>,
    /// The channels it is a party to.
    channels: Vec<u32>,
}

/// One party of a channel.
#[derive(Debug)]
struct Leg {
    device: DeviceId,
    /// Its user's slot in [`Relay::users`].
    user: usize,
    /// The session it last sent a valid frame from.
    heard: Option<Destination>,
}

#[derive(Debug)]
struct Channel {
    /// The requester, then the peer.
    legs: [Leg; 2],
    last_active: Instant,
}

/// The relay table. See the [module documentation](self).
#[derive(Debug)]
pub struct Relay {
    cfg: RelayConfig,
    rng: Rng,
    /// Every registered session destination and its device.
    sessions: BTreeMap<Destination, DeviceId>,
    /// Every device with at least one registered session.
    devices: BTreeMap<DeviceId, DeviceEntry>,
    /// Users by slot (a slot index is what legs keep, so the per-frame path does not hash a
    /// name); `None` slots are free.
    users: Vec<Option<UserEntry>>,
    free_users: Vec<usize>,
    user_slots: BTreeMap<UserName, usize>,
    /// Live channels per (requester's user slot, peer device), counted against
    /// [`RelayConfig::max_channels_per_pair`]; no zero entries. A user slot is freed only
    /// when its last device goes, which releases the user's channels first, so a reused slot
    /// never inherits counts.
    pairs: BTreeMap<(usize, DeviceId), usize>,
    channels: BTreeMap<u32, Channel>,
    /// When idle channels are next looked for (a lower bound of the earliest expiry, at least
    /// [`SCAN_INTERVAL`] after the previous scan).
    next_scan: Option<Instant>,
    last_scan: Option<Instant>,
    stats: RelayStats,
}

impl Relay {
    /// An empty table.
    pub fn new(cfg: RelayConfig) -> Self {
        let rng = Rng::from_seed_bytes(cfg.seed);
        Self {
            cfg,
            rng,
            sessions: BTreeMap::new(),
            devices: BTreeMap::new(),
            users: Vec::new(),
            free_users: Vec::new(),
            user_slots: BTreeMap::new(),
            pairs: BTreeMap::new(),
            channels: BTreeMap::new(),
            next_scan: None,
            last_scan: None,
            stats: RelayStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Live channels.
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Register a session: `dest` now reaches the authenticated device `party`, and is its
    /// most recently registered session.
    ///
    /// Registering a destination its device already holds only makes it the most recent. A
    /// destination held by another device (the facade missed a [`Relay::session_down`]) is
    /// taken from it first, as by [`Relay::session_down`], and whatever that releases is
    /// returned; otherwise the result is empty. A device keeps the user it was first
    /// registered with.
    pub fn session_up(&mut self, dest: Destination, party: Party) -> Vec<Released> {
        let mut released = Vec::new();
        if let Some(&owner) = self.sessions.get(&dest) {
            if owner == party.device {
                if let Some(dev) = self.devices.get_mut(&owner) {
                    dev.sessions.retain(|d| *d != dest);
                    dev.sessions.push(dest);
                }
                return released;
            }
            released = self.remove_session(&dest);
        }
        let device = party.device;
        if !self.devices.contains_key(&device) {
            let user = self.user_slot(party.user);
            if let Some(u) = self.users[user].as_mut() {
                u.devices += 1;
            }
            self.devices.insert(
                device,
                DeviceEntry {
                    user,
                    sessions: Vec::new(),
                    channels: Vec::new(),
                },
            );
        }
        if let Some(dev) = self.devices.get_mut(&device) {
            dev.sessions.push(dest.clone());
        }
        self.sessions.insert(dest, device);
        released
    }

    /// A session's address changed (a NAT rebinding): `old` is now `new`, keeping its place
    /// among its device's sessions. Channel legs that heard the party at `old` now send to
    /// `new`. Unknown `old`: nothing happens.
    ///
    /// If `new` was registered to another device, that registration is dropped first, as by
    /// [`Relay::session_down`], and whatever that releases is returned.
    pub fn session_moved(&mut self, old: &Destination, new: Destination) -> Vec<Released> {
        if *old == new {
            return Vec::new();
        }
        let Some(&device) = self.sessions.get(old) else {
            return Vec::new();
        };
        let mut released = Vec::new();
        match self.sessions.get(&new) {
            Some(&owner) if owner != device => released = self.remove_session(&new),
            _ => {}
        }
        self.sessions.remove(old);
        let Some(dev) = self.devices.get_mut(&device) else {
            return released;
        };
        if dev.sessions.contains(&new) {
            dev.sessions.retain(|d| d != old);
        } else if let Some(slot) = dev.sessions.iter_mut().find(|d| *d == old) {
            *slot = new.clone();
        }
        for id in &dev.channels {
            if let Some(leg) = self
                .channels
                .get_mut(id)
                .and_then(|ch| ch.legs.iter_mut().find(|l| l.device == device))
            {
                if leg.heard.as_ref() == Some(old) {
                    leg.heard = Some(new.clone());
                }
            }
        }
        self.sessions.insert(new, device);
        released
    }

    /// A session went down. When it was its device's last session here, every channel of
    /// the device is released, and the other party of each is returned, to be told.
    ///
    /// `now` is unused today; it is taken so that every command has the same shape.
    pub fn session_down(&mut self, now: Instant, dest: &Destination) -> Vec<Released> {
        let _ = now;
        self.remove_session(dest)
    }

    /// `requester` (a registered session) asks for a channel to `peer_device`, which must have
    /// at least one session here. On success the facade answers the requester with the
    /// channel and offers it to the peer at [`Allocated::peer`].
    pub fn allocate(
        &mut self,
        now: Instant,
        requester: &Destination,
        peer_device: DeviceId,
    ) -> Result<Allocated, RelayRefusal> {
        let result = self.try_allocate(now, requester, peer_device);
        if let Err(refusal) = result {
            let counter = match refusal {
                RelayRefusal::UnknownPeer => &mut self.stats.refused_unknown_peer,
                RelayRefusal::Quota => &mut self.stats.refused_quota,
                RelayRefusal::Full => &mut self.stats.refused_full,
                RelayRefusal::SelfRelay => &mut self.stats.refused_self,
                RelayRefusal::NoSession => &mut self.stats.refused_no_session,
            };
            *counter += 1;
        }
        result
    }

    fn try_allocate(
        &mut self,
        now: Instant,
        requester: &Destination,
        peer_device: DeviceId,
    ) -> Result<Allocated, RelayRefusal> {
        let &req_device = self
            .sessions
            .get(requester)
            .ok_or(RelayRefusal::NoSession)?;
        if req_device == peer_device {
            return Err(RelayRefusal::SelfRelay);
        }
        let req_user = self
            .devices
            .get(&req_device)
            .ok_or(RelayRefusal::NoSession)?
            .user;
        let peer = self
            .devices
            .get(&peer_device)
            .ok_or(RelayRefusal::UnknownPeer)?;
        let peer_user = peer.user;
        let peer_dest = peer
            .sessions
            .last()
            .cloned()
            .ok_or(RelayRefusal::UnknownPeer)?;
        // Only the requester's user pays: the peer did not ask, and must not be shut out of
        // the relay by others' requests.
        let held = self.users[req_user].as_ref().map_or(0, |u| u.channels);
        let to_peer = self
            .pairs
            .get(&(req_user, peer_device))
            .copied()
            .unwrap_or(0);
        if held >= self.cfg.max_channels_per_user || to_peer >= self.cfg.max_channels_per_pair {
            return Err(RelayRefusal::Quota);
        }
        if self.channels.len() >= self.cfg.max_channels {
            return Err(RelayRefusal::Full);
        }
        let Some(requester_name) = self.users[req_user].as_ref().map(|u| u.name.clone()) else {
            return Err(RelayRefusal::NoSession);
        };

        // Full was checked above, so a free id exists, and ids are sparse: few draws.
        let channel = loop {
            let id = self.rng.u32() & !TO_PARTY;
            if id != 0 && !self.channels.contains_key(&id) {
                break id;
            }
        };
        let leg = |device, user| Leg {
            device,
            user,
            heard: None,
        };
        self.channels.insert(
            channel,
            Channel {
                legs: [leg(req_device, req_user), leg(peer_device, peer_user)],
                last_active: now,
            },
        );
        for device in [req_device, peer_device] {
            if let Some(dev) = self.devices.get_mut(&device) {
                dev.channels.push(channel);
            }
        }
        self.charge(req_user, peer_device, true);
        self.stats.allocated += 1;

        let floor = self.last_scan.map_or(now, |t| t + SCAN_INTERVAL);
        let due = (now + self.cfg.idle_timeout).max(floor);
        self.next_scan = Some(self.next_scan.map_or(due, |t| t.min(due)));

        Ok(Allocated {
            channel,
            peer: peer_dest,
            requester: Party {
                device: req_device,
                user: requester_name,
            },
        })
    }

    /// A relayed frame arrived at `now` from the session `from`. Returns where to send it and
    /// the bytes to send (the same frame with the direction bit set: the same length), or
    /// `None` when it is dropped (and counted).
    ///
    /// The output is one allocation and one copy of the frame. For a stream destination the
    /// facade adds the stream's length prefix, as for any packet.
    pub fn forward(
        &mut self,
        now: Instant,
        from: &Destination,
        frame: &[u8],
    ) -> Option<(Destination, Bytes)> {
        let word = match frame {
            [RELAY_MAGIC, a, b, c, d, ..] if frame.len() <= self.cfg.max_frame => {
                u32::from_be_bytes([*a, *b, *c, *d])
            }
            _ => {
                self.stats.dropped_malformed += 1;
                return None;
            }
        };
        if word & TO_PARTY != 0 {
            self.stats.dropped_malformed += 1;
            return None;
        }
        let Some(ch) = self.channels.get_mut(&word) else {
            self.stats.dropped_unknown_channel += 1;
            return None;
        };
        let Some(&device) = self.sessions.get(from) else {
            self.stats.dropped_not_party += 1;
            return None;
        };
        let sender = if ch.legs[0].device == device {
            0
        } else if ch.legs[1].device == device {
            1
        } else {
            self.stats.dropped_not_party += 1;
            return None;
        };

        // An authenticated party sent on the channel: it is in use, and the party is there.
        if now > ch.last_active {
            ch.last_active = now;
        }
        let leg = &mut ch.legs[sender];
        if leg.heard.as_ref() != Some(from) {
            leg.heard = Some(from.clone());
        }
        let allowed = self.users[leg.user]
            .as_mut()
            .is_some_and(|u| u.take(now, frame.len(), self.cfg.rate_per_user, self.cfg.burst));
        if !allowed {
            self.stats.dropped_rate += 1;
            return None;
        }

        let to = &ch.legs[1 - sender];
        let dest = match &to.heard {
            Some(d) => d.clone(),
            None => self.devices.get(&to.device)?.sessions.last()?.clone(),
        };
        let mut out = BytesMut::from(frame);
        out[1] |= 0x80;
        self.stats.relayed_packets += 1;
        self.stats.relayed_bytes += frame.len() as u64;
        Some((dest, out.freeze()))
    }

    /// The party at session `from` releases `channel`. Returns the other party, to be told;
    /// `None` (and nothing changes) when there is no such channel or `from` is not a session
    /// of one of its parties.
    ///
    /// `now` is unused today; it is taken so that every command has the same shape.
    pub fn release(&mut self, now: Instant, from: &Destination, channel: u32) -> Option<Released> {
        let _ = now;
        let device = *self.sessions.get(from)?;
        let ch = self.channels.get(&channel)?;
        let other = if ch.legs[0].device == device {
            1
        } else if ch.legs[1].device == device {
            0
        } else {
            return None;
        };
        let notify = self.best_destination(&ch.legs[other])?;
        self.remove_channel(channel);
        self.stats.released += 1;
        Some(Released {
            channel,
            notify,
            reason: ReleaseReason::Closed,
        })
    }

    /// Release the channels idle for [`RelayConfig::idle_timeout`]; both parties of each are
    /// returned, to be told. Looks at most once per second, and only when
    /// [`Relay::poll_timeout`] is due; calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Released> {
        let mut released = Vec::new();
        match self.next_scan {
            Some(t) if now >= t => {}
            _ => return released,
        }
        let idle = self.cfg.idle_timeout;
        let expired: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, ch)| now.saturating_duration_since(ch.last_active) >= idle)
            .map(|(&id, _)| id)
            .collect();
        for channel in expired {
            if let Some(ch) = self.channels.get(&channel) {
                for leg in &ch.legs {
                    if let Some(notify) = self.best_destination(leg) {
                        released.push(Released {
                            channel,
                            notify,
                            reason: ReleaseReason::Idle,
                        });
                    }
                }
            }
            self.remove_channel(channel);
            self.stats.expired += 1;
        }
        self.last_scan = Some(now);
        self.next_scan = self
            .channels
            .values()
            .map(|ch| ch.last_active)
            .min()
            .map(|oldest| (oldest + idle).max(now + SCAN_INTERVAL));
        released
    }

    /// When [`Relay::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.channels.is_empty() {
            None
        } else {
            self.next_scan
        }
    }

    /// Where frames for a leg's party go: where it last sent from, else its most recently
    /// registered session.
    fn best_destination(&self, leg: &Leg) -> Option<Destination> {
        match &leg.heard {
            Some(d) => Some(d.clone()),
            None => self.devices.get(&leg.device)?.sessions.last().cloned(),
        }
    }

    /// The slot of `name`, created if new.
    fn user_slot(&mut self, name: UserName) -> usize {
        if let Some(&slot) = self.user_slots.get(&name) {
            return slot;
        }
        let entry = UserEntry {
            name: name.clone(),
            devices: 0,
            channels: 0,
            tokens: 0,
            refilled: None,
        };
        let slot = match self.free_users.pop() {
            Some(slot) => {
                self.users[slot] = Some(entry);
                slot
            }
            None => {
                self.users.push(Some(entry));
                self.users.len() - 1
            }
        };
        self.user_slots.insert(name, slot);
        slot
    }

    /// Charge a channel to the user (slot) who asked for it and to its pair with the peer
    /// device, or (`add` false) give back exactly that when the channel goes.
    fn charge(&mut self, user: usize, peer_device: DeviceId, add: bool) {
        if let Some(u) = self.users[user].as_mut() {
            if add {
                u.channels += 1;
            } else {
                u.channels = u.channels.saturating_sub(1);
            }
        }
        let key = (user, peer_device);
        if add {
            *self.pairs.entry(key).or_insert(0) += 1;
        } else if let Some(n) = self.pairs.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pairs.remove(&key);
            }
        }
    }

    /// Forget a channel everywhere.
    fn remove_channel(&mut self, channel: u32) {
        let Some(ch) = self.channels.remove(&channel) else {
            return;
        };
        for leg in &ch.legs {
            if let Some(dev) = self.devices.get_mut(&leg.device) {
                dev.channels.retain(|&c| c != channel);
            }
        }
        // Legs are [requester, peer]: give back what `try_allocate` charged.
        self.charge(ch.legs[0].user, ch.legs[1].device, false);
    }

    /// Unregister one session destination; see [`Relay::session_down`].
    fn remove_session(&mut self, dest: &Destination) -> Vec<Released> {
        let mut released = Vec::new();
        let Some(device) = self.sessions.remove(dest) else {
            return released;
        };
        let Some(dev) = self.devices.get_mut(&device) else {
            return released;
        };
        dev.sessions.retain(|d| d != dest);
        if !dev.sessions.is_empty() {
            // Legs that heard the device there fall back to its latest session.
            for id in &dev.channels {
                if let Some(leg) = self
                    .channels
                    .get_mut(id)
                    .and_then(|ch| ch.legs.iter_mut().find(|l| l.device == device))
                {
                    if leg.heard.as_ref() == Some(dest) {
                        leg.heard = None;
                    }
                }
            }
            return released;
        }

        let channels = std::mem::take(&mut dev.channels);
        for channel in channels {
            let Some(ch) = self.channels.get(&channel) else {
                continue;
            };
            if let Some(other) = ch.legs.iter().find(|l| l.device != device) {
                if let Some(notify) = self.best_destination(other) {
                    released.push(Released {
                        channel,
                        notify,
                        reason: ReleaseReason::PartyGone,
                    });
                }
            }
            self.remove_channel(channel);
            self.stats.released += 1;
        }
        if let Some(dev) = self.devices.remove(&device) {
            let slot = dev.user;
            let gone = self.users[slot].as_mut().is_some_and(|u| {
                u.devices -= 1;
                u.devices == 0
            });
            if gone {
                if let Some(u) = self.users[slot].take() {
                    self.user_slots.remove(&u.name);
                }
                self.free_users.push(slot);
            }
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use natter_core::sansio::StreamId;
    use proptest::prelude::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn udp(n: u8) -> Destination {
        Destination::Udp(SocketAddr::from(([198, 51, 100, n], 40_000)))
    }

    fn udp_port(n: u8, port: u16) -> Destination {
        Destination::Udp(SocketAddr::from(([198, 51, 100, n], port)))
    }

    fn tcp(n: u64) -> Destination {
        Destination::Stream(StreamId(n))
    }

    fn party(device: u8, user: &str) -> Party {
        Party {
            device: DeviceId([device; 16]),
            user: UserName::parse(user).unwrap(),
        }
    }

    fn frame(channel: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![RELAY_MAGIC];
        f.extend_from_slice(&channel.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn cfg() -> RelayConfig {
        RelayConfig::new([7; 32])
    }

    /// Alice's device 1 at `udp(1)`, Bob's device 2 at `udp(2)`, a channel between them.
    fn pair(now: Instant) -> (Relay, u32) {
        let mut r = Relay::new(cfg());
        assert!(r.session_up(udp(1), party(1, "alice")).is_empty());
        assert!(r.session_up(udp(2), party(2, "bob")).is_empty());
        let a = r.allocate(now, &udp(1), DeviceId([2; 16])).unwrap();
        assert_eq!(a.peer, udp(2));
        assert_eq!(a.requester, party(1, "alice"));
        (r, a.channel)
    }

    /// Forward and check the output is the input with the direction bit set.
    fn relayed(r: &mut Relay, now: Instant, from: &Destination, f: &[u8]) -> Option<Destination> {
        let (to, out) = r.forward(now, from, f)?;
        assert_eq!(out.len(), f.len());
        assert_eq!(out[1], f[1] | 0x80);
        assert_eq!(out[0], f[0]);
        assert_eq!(out[2..], f[2..]);
        Some(to)
    }

    #[test]
    fn forwards_both_ways() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        assert!(ch != 0 && ch & TO_PARTY == 0);
        assert_eq!(
            relayed(&mut r, now, &udp(1), &frame(ch, b"hello")),
            Some(udp(2))
        );
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"hi")),
            Some(udp(1))
        );
        assert_eq!(relayed(&mut r, now, &udp(1), &frame(ch, b"")), Some(udp(2)));
        let s = r.stats();
        assert_eq!(s.relayed_packets, 3);
        assert_eq!(s.relayed_bytes, 10 + 7 + 5);
        assert_eq!(s.allocated, 1);
        assert_eq!(r.channels(), 1);
    }

    #[test]
    fn non_party_dropped() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        // A registered device that is not a party, and an address nobody registered.
        r.session_up(udp(3), party(3, "mallory"));
        assert_eq!(r.forward(now, &udp(3), &frame(ch, b"x")), None);
        assert_eq!(r.forward(now, &udp(9), &frame(ch, b"x")), None);
        assert_eq!(r.forward(now, &tcp(1), &frame(ch, b"x")), None);
        assert_eq!(r.stats().dropped_not_party, 3);
        assert_eq!(r.stats().relayed_packets, 0);
    }

    #[test]
    fn unknown_channel_dropped() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        let other = if ch == 1 { 2 } else { 1 };
        assert_eq!(r.forward(now, &udp(1), &frame(other, b"x")), None);
        assert_eq!(r.forward(now, &udp(1), &frame(0, b"x")), None);
        assert_eq!(r.stats().dropped_unknown_channel, 2);
    }

    #[test]
    fn malformed_dropped() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        let good = frame(ch, b"payload");
        let mut n = 0;
        for len in 0..HEADER_LEN {
            assert_eq!(r.forward(now, &udp(1), &good[..len]), None);
            n += 1;
        }
        for first in [0x70, 0x72, 0x7F, 0x51, 0x61, 0x00, 0xF1] {
            let mut f = good.clone();
            f[0] = first;
            assert_eq!(r.forward(now, &udp(1), &f), None);
            n += 1;
        }
        // Direction bit already set: a frame meant for a party, bounced back.
        assert_eq!(r.forward(now, &udp(1), &frame(ch | TO_PARTY, b"x")), None);
        n += 1;
        // Longer than the limit.
        let big = frame(ch, &vec![0; cfg().max_frame - HEADER_LEN + 1]);
        assert_eq!(r.forward(now, &udp(1), &big), None);
        n += 1;
        assert_eq!(r.stats().dropped_malformed, n);
        // The limit itself passes.
        let max = frame(ch, &vec![0; cfg().max_frame - HEADER_LEN]);
        assert_eq!(relayed(&mut r, now, &udp(1), &max), Some(udp(2)));
    }

    #[test]
    fn rate_limited_per_user_with_refill() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.rate_per_user = 1000;
        c.burst = 2000;
        let mut r = Relay::new(c);
        r.session_up(udp(1), party(1, "alice"));
        r.session_up(udp(11), party(11, "alice")); // Alice's second device
        r.session_up(udp(2), party(2, "bob"));
        r.session_up(udp(3), party(3, "carol"));
        let ab = r.allocate(t0, &udp(1), DeviceId([2; 16])).unwrap().channel;
        let ac = r.allocate(t0, &udp(11), DeviceId([3; 16])).unwrap().channel;
        let f = |ch| frame(ch, &[0; 495]); // 500 bytes

        // The burst: 2,000 bytes over both of Alice's devices, then nothing.
        assert!(r.forward(t0, &udp(1), &f(ab)).is_some());
        assert!(r.forward(t0, &udp(11), &f(ac)).is_some());
        assert!(r.forward(t0, &udp(1), &f(ab)).is_some());
        assert!(r.forward(t0, &udp(11), &f(ac)).is_some());
        assert!(r.forward(t0, &udp(1), &f(ab)).is_none());
        assert!(r.forward(t0, &udp(11), &f(ac)).is_none());
        assert_eq!(r.stats().dropped_rate, 2);
        // Bob has his own bucket.
        assert!(r.forward(t0, &udp(2), &f(ab)).is_some());

        // 499 ms refill 499 bytes: not enough; at 500 ms, 500 bytes: one frame.
        assert!(r
            .forward(t0 + Duration::from_millis(499), &udp(1), &f(ab))
            .is_none());
        assert!(r
            .forward(t0 + Duration::from_millis(500), &udp(1), &f(ab))
            .is_some());
        assert!(r
            .forward(t0 + Duration::from_millis(500), &udp(1), &f(ab))
            .is_none());
        // Refill is exact however often the bucket is touched: 1,000 probes 1 ms apart.
        let mut t = t0 + Duration::from_millis(500);
        let mut passed = 0;
        for _ in 0..1000 {
            t += Duration::from_millis(1);
            passed += u32::from(r.forward(t, &udp(1), &frame(ab, &[0; 5])).is_some());
        }
        assert_eq!(passed, 100); // 10-byte frames, 1,000 bytes/s, for 1 s
                                 // A long silence refills to the burst, no more.
        let later = t + Duration::from_secs(3600);
        for _ in 0..4 {
            assert!(r.forward(later, &udp(1), &f(ab)).is_some());
        }
        assert!(r.forward(later, &udp(1), &f(ab)).is_none());
        assert_eq!(r.stats().dropped_rate, 2 + 2 + 900 + 1);
    }

    /// The quota counters are exactly what the live channels charge: each channel once to
    /// its requester's user and once to (that user, the peer device); no zero pair entries.
    fn assert_charges_match(r: &Relay) {
        let mut users: BTreeMap<usize, usize> = BTreeMap::new();
        let mut pairs: BTreeMap<(usize, DeviceId), usize> = BTreeMap::new();
        for ch in r.channels.values() {
            *users.entry(ch.legs[0].user).or_default() += 1;
            *pairs
                .entry((ch.legs[0].user, ch.legs[1].device))
                .or_default() += 1;
        }
        for (slot, u) in r.users.iter().enumerate() {
            let held = u.as_ref().map_or(0, |u| u.channels);
            assert_eq!(
                held,
                users.get(&slot).copied().unwrap_or(0),
                "user slot {slot}"
            );
            assert!(held <= r.cfg.max_channels_per_user);
        }
        assert_eq!(r.pairs, pairs);
        assert!(r
            .pairs
            .values()
            .all(|&n| n > 0 && n <= r.cfg.max_channels_per_pair));
    }

    /// Channels `user` is charged for.
    fn held(r: &Relay, user: &str) -> usize {
        let slot = r.user_slots[&UserName::parse(user).unwrap()];
        r.users[slot].as_ref().unwrap().channels
    }

    #[test]
    fn quota_per_user_and_global_max() {
        let now = Instant::now();
        let mut c = cfg();
        c.max_channels_per_user = 2;
        c.max_channels = 5;
        let mut r = Relay::new(c);
        r.session_up(udp(1), party(1, "alice"));
        r.session_up(udp(11), party(11, "alice"));
        for d in 2..=9 {
            r.session_up(udp(d), party(d, &format!("user{d}")));
        }
        let to = |d: u8| DeviceId([d; 16]);
        // Alice's two devices share her quota.
        let ab = r.allocate(now, &udp(1), to(2)).unwrap().channel;
        r.allocate(now, &udp(11), to(3)).unwrap();
        assert_eq!(r.allocate(now, &udp(1), to(4)), Err(RelayRefusal::Quota));
        assert_eq!(r.stats().refused_quota, 1);
        // A channel user4 asks for to her is user4's to pay: allowed, and not hers.
        r.allocate(now, &udp(4), to(1)).unwrap();
        assert_eq!((held(&r, "alice"), held(&r, "user4")), (2, 1));
        assert_eq!(r.allocate(now, &udp(11), to(4)), Err(RelayRefusal::Quota));
        assert_eq!(r.stats().refused_quota, 2);
        // One of hers released, by the peer: her slot is back.
        r.release(now, &udp(2), ab).unwrap();
        assert_eq!(held(&r, "alice"), 1);
        r.allocate(now, &udp(1), to(4)).unwrap();
        assert_charges_match(&r);
        // Global max: 5 channels.
        r.allocate(now, &udp(6), to(7)).unwrap();
        r.allocate(now, &udp(8), to(9)).unwrap();
        assert_eq!(r.channels(), 5);
        assert_eq!(r.allocate(now, &udp(6), to(9)), Err(RelayRefusal::Full));
        assert_eq!(r.stats().refused_full, 1);
        assert_eq!(r.stats().refused(), 3);
        assert_charges_match(&r);
    }

    #[test]
    fn a_victim_keeps_its_quota_whatever_others_open_to_it() {
        let now = Instant::now();
        let mut r = Relay::new(cfg());
        let to = |d: u8| DeviceId([d; 16]);
        r.session_up(udp(1), party(1, "victim"));
        // Five other users, each with as many channels to the victim's device as the pair
        // cap lets it: 20 channels, far over the victim's quota of 8.
        for d in 2..=6 {
            r.session_up(udp(d), party(d, &format!("mallory{d}")));
            for _ in 0..cfg().max_channels_per_pair {
                r.allocate(now, &udp(d), to(1)).unwrap();
            }
        }
        assert_eq!(r.channels(), 20);
        assert_eq!(held(&r, "victim"), 0);
        assert_eq!(r.stats().refused_quota, 0);
        // The victim still opens its own 8 channels, to anyone: to the users who hold channels
        // to it, and to others.
        for d in 2..=9 {
            r.session_up(udp(d + 20), party(d + 20, &format!("friend{d}")));
        }
        for d in 2..=6 {
            r.allocate(now, &udp(1), to(d)).unwrap();
        }
        for d in 22..=24 {
            r.allocate(now, &udp(1), to(d)).unwrap();
        }
        assert_eq!(held(&r, "victim"), cfg().max_channels_per_user);
        // Then its own quota binds, and only its own.
        assert_eq!(r.allocate(now, &udp(1), to(25)), Err(RelayRefusal::Quota));
        assert!(r.allocate(now, &udp(25), to(1)).is_ok());
        assert_eq!(r.stats().refused_quota, 1);
        assert_eq!(r.channels(), 20 + 8 + 1);
        assert_charges_match(&r);
    }

    #[test]
    fn pair_cap_per_requesting_user_and_peer_device() {
        let now = Instant::now();
        let mut r = Relay::new(cfg());
        let to = |d: u8| DeviceId([d; 16]);
        r.session_up(udp(1), party(1, "victim"));
        r.session_up(udp(11), party(11, "victim")); // the victim's second device
        r.session_up(udp(9), party(9, "mallory"));
        r.session_up(udp(19), party(19, "mallory")); // hers
        r.session_up(udp(3), party(3, "carol"));
        let cap = cfg().max_channels_per_pair;
        assert_eq!(cap, 4);
        let mut first = None;
        for _ in 0..cap {
            let ch = r.allocate(now, &udp(9), to(1)).unwrap().channel;
            first.get_or_insert(ch);
        }
        // A fifth to that device is refused, from either of mallory's devices.
        assert_eq!(r.allocate(now, &udp(9), to(1)), Err(RelayRefusal::Quota));
        assert_eq!(r.allocate(now, &udp(19), to(1)), Err(RelayRefusal::Quota));
        assert_eq!(r.stats().refused_quota, 2);
        // The cap is per peer device: the victim's other device, or carol's, may still be
        // reached, up to mallory's own quota of 8.
        for _ in 0..cap {
            r.allocate(now, &udp(19), to(11)).unwrap();
        }
        assert_eq!(held(&r, "mallory"), 8);
        assert_eq!(r.allocate(now, &udp(9), to(3)), Err(RelayRefusal::Quota));
        assert_eq!(r.stats().refused_quota, 3);
        // Mallory's channels to the victim do not cap the victim's to her.
        for _ in 0..cap {
            r.allocate(now, &udp(1), to(9)).unwrap();
        }
        // One released: one more to that device.
        r.release(now, &udp(1), first.unwrap()).unwrap();
        r.allocate(now, &udp(19), to(1)).unwrap();
        assert_eq!(r.allocate(now, &udp(9), to(1)), Err(RelayRefusal::Quota));
        assert_eq!(r.stats().refused_quota, 4);
        assert_charges_match(&r);
    }

    #[test]
    fn quotas_are_given_back_on_release_expiry_and_session_down() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.max_channels_per_user = 2;
        c.max_channels_per_pair = 1;
        let idle = c.idle_timeout;
        let mut r = Relay::new(c);
        let to = |d: u8| DeviceId([d; 16]);
        r.session_up(udp(1), party(1, "alice"));
        r.session_up(udp(2), party(2, "bob"));
        r.session_up(udp(3), party(3, "carol"));
        let full = |r: &mut Relay, t: Instant| {
            // Alice's two: one to Bob, one to Carol; a third, or a second to Bob, is refused.
            let ab = r.allocate(t, &udp(1), to(2)).unwrap().channel;
            let ac = r.allocate(t, &udp(1), to(3)).unwrap().channel;
            assert_eq!(r.allocate(t, &udp(1), to(2)), Err(RelayRefusal::Quota));
            assert_charges_match(r);
            (ab, ac)
        };

        // Released by either party.
        let (ab, ac) = full(&mut r, t0);
        r.release(t0, &udp(1), ab).unwrap();
        r.release(t0, &udp(3), ac).unwrap();
        assert_eq!(held(&r, "alice"), 0);
        assert!(r.pairs.is_empty());

        // Idle expiry.
        full(&mut r, t0);
        assert_eq!(r.handle_timeout(t0 + idle).len(), 4);
        assert_eq!(r.channels(), 0);
        assert_eq!(held(&r, "alice"), 0);
        assert!(r.pairs.is_empty());

        // The peer's last session going down gives the requester back her share.
        let t1 = t0 + idle;
        full(&mut r, t1);
        assert_eq!(r.session_down(t1, &udp(2)).len(), 1);
        assert_eq!(held(&r, "alice"), 1);
        assert_charges_match(&r);
        r.session_up(udp(2), party(2, "bob"));
        r.allocate(t1, &udp(1), to(2)).unwrap();
        assert_eq!(r.allocate(t1, &udp(1), to(2)), Err(RelayRefusal::Quota));
        // Her own last session going down: everything she held, nothing left charged.
        assert_eq!(r.session_down(t1, &udp(1)).len(), 2);
        assert_eq!(r.channels(), 0);
        assert!(r.pairs.is_empty());
        assert!(r.users.iter().flatten().all(|u| u.channels == 0));
        // A channel Bob asked for to Carol goes with her last session, and his share with it.
        r.allocate(t1, &udp(2), to(3)).unwrap();
        assert_eq!(held(&r, "bob"), 1);
        assert_eq!(r.session_down(t1, &udp(3)).len(), 1);
        assert_eq!(held(&r, "bob"), 0);
        assert_charges_match(&r);
        assert_eq!(r.stats().refused_quota, 4);
    }

    #[test]
    fn channel_between_two_devices_of_one_user_counts_once() {
        let now = Instant::now();
        let mut c = cfg();
        c.max_channels_per_user = 1;
        let mut r = Relay::new(c);
        r.session_up(udp(1), party(1, "alice"));
        r.session_up(udp(11), party(11, "alice"));
        r.allocate(now, &udp(1), DeviceId([11; 16])).unwrap();
        assert_eq!(
            r.allocate(now, &udp(11), DeviceId([1; 16])),
            Err(RelayRefusal::Quota)
        );
    }

    #[test]
    fn refusals() {
        let now = Instant::now();
        let mut r = Relay::new(cfg());
        r.session_up(udp(1), party(1, "alice"));
        r.session_up(tcp(1), party(1, "alice"));
        assert_eq!(
            r.allocate(now, &udp(1), DeviceId([1; 16])),
            Err(RelayRefusal::SelfRelay)
        );
        assert_eq!(
            r.allocate(now, &tcp(1), DeviceId([1; 16])),
            Err(RelayRefusal::SelfRelay)
        );
        assert_eq!(
            r.allocate(now, &udp(1), DeviceId([2; 16])),
            Err(RelayRefusal::UnknownPeer)
        );
        assert_eq!(
            r.allocate(now, &udp(9), DeviceId([1; 16])),
            Err(RelayRefusal::NoSession)
        );
        let s = r.stats();
        assert_eq!(
            (s.refused_self, s.refused_unknown_peer, s.refused_no_session),
            (2, 1, 1)
        );
        assert_eq!(r.channels(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn refusal_codes_round_trip() {
        for code in 0..=255u8 {
            if let Some(r) = RelayRefusal::from_code(code) {
                assert_eq!(r.code(), code);
            }
        }
        for r in [
            RelayRefusal::UnknownPeer,
            RelayRefusal::Quota,
            RelayRefusal::Full,
            RelayRefusal::SelfRelay,
            RelayRefusal::NoSession,
        ] {
            assert_eq!(RelayRefusal::from_code(r.code()), Some(r));
        }
        assert_eq!(RelayRefusal::from_code(0), None);
    }

    #[test]
    fn release_only_by_a_party() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        r.session_up(udp(3), party(3, "mallory"));
        assert_eq!(r.release(now, &udp(3), ch), None);
        assert_eq!(r.release(now, &udp(9), ch), None);
        assert_eq!(r.release(now, &udp(1), ch ^ 1), None);
        assert_eq!(r.channels(), 1);
        assert_eq!(
            r.release(now, &udp(2), ch),
            Some(Released {
                channel: ch,
                notify: udp(1),
                reason: ReleaseReason::Closed
            })
        );
        assert_eq!(r.channels(), 0);
        assert_eq!(r.stats().released, 1);
        assert_eq!(r.forward(now, &udp(1), &frame(ch, b"x")), None);
        assert_eq!(r.stats().dropped_unknown_channel, 1);
    }

    #[test]
    fn idle_expiry_releases_and_reports_both_parties() {
        let t0 = Instant::now();
        let (mut r, ch) = pair(t0);
        r.session_up(udp(3), party(3, "carol"));
        r.session_up(udp(4), party(4, "dave"));
        let ch2 = r.allocate(t0, &udp(3), DeviceId([4; 16])).unwrap().channel;
        let idle = cfg().idle_timeout;
        assert_eq!(r.poll_timeout(), Some(t0 + idle));
        // Early calls do nothing.
        assert!(r.handle_timeout(t0 + idle / 2).is_empty());
        // Alice and Bob talk at 30 s: only carol and dave's channel expires at 60 s.
        relayed(&mut r, t0 + 30 * SECOND, &udp(2), &frame(ch, b"x")).unwrap();
        let mut gone = r.handle_timeout(t0 + idle);
        gone.sort_by_key(|g| format!("{:?}", g.notify));
        assert_eq!(
            gone,
            vec![
                Released {
                    channel: ch2,
                    notify: udp(3),
                    reason: ReleaseReason::Idle
                },
                Released {
                    channel: ch2,
                    notify: udp(4),
                    reason: ReleaseReason::Idle
                },
            ]
        );
        assert_eq!(r.stats().expired, 1);
        assert_eq!(r.channels(), 1);
        assert_eq!(r.poll_timeout(), Some(t0 + 30 * SECOND + idle));
        // Bob sent last, so he is heard at udp(2); Alice never sent: her latest session.
        let gone = r.handle_timeout(t0 + 30 * SECOND + idle);
        assert_eq!(gone.len(), 2);
        assert_eq!(r.channels(), 0);
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.stats().expired, 2);
    }

    #[test]
    fn idle_scan_is_coalesced_to_once_a_second() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.idle_timeout = Duration::from_millis(100);
        let mut r = Relay::new(c);
        for d in 1..=6 {
            r.session_up(udp(d), party(d, &format!("user{d}")));
        }
        r.allocate(t0, &udp(1), DeviceId([2; 16])).unwrap();
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        assert_eq!(r.handle_timeout(t0 + Duration::from_millis(100)).len(), 2);
        // New channels right after a scan wait for the next second, not their 100 ms.
        let t1 = t0 + Duration::from_millis(150);
        r.allocate(t1, &udp(3), DeviceId([4; 16])).unwrap();
        r.allocate(t1, &udp(5), DeviceId([6; 16])).unwrap();
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_millis(1100)));
        assert_eq!(r.handle_timeout(t0 + Duration::from_millis(1100)).len(), 4);
        assert_eq!(r.channels(), 0);
    }

    #[test]
    fn last_session_down_releases_the_devices_channels() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        r.session_up(tcp(7), party(1, "alice"));
        r.session_up(udp(3), party(3, "carol"));
        let ch3 = r.allocate(now, &udp(3), DeviceId([1; 16])).unwrap().channel;
        // Alice's UDP session goes: she still has TCP, nothing is released, and frames for
        // her now go there.
        assert!(r.session_down(now, &udp(1)).is_empty());
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(tcp(7))
        );
        assert_eq!(r.forward(now, &udp(1), &frame(ch, b"x")), None);
        // Her last session goes: both channels, Bob and Carol told.
        let mut gone = r.session_down(now, &tcp(7));
        gone.sort_by_key(|g| format!("{:?}", g.notify));
        assert_eq!(
            gone,
            vec![
                Released {
                    channel: ch,
                    notify: udp(2),
                    reason: ReleaseReason::PartyGone
                },
                Released {
                    channel: ch3,
                    notify: udp(3),
                    reason: ReleaseReason::PartyGone
                },
            ]
        );
        assert_eq!(r.channels(), 0);
        assert_eq!(r.stats().released, 2);
        assert!(r.session_down(now, &tcp(7)).is_empty());
        assert_eq!(
            r.allocate(now, &udp(2), DeviceId([1; 16])),
            Err(RelayRefusal::UnknownPeer)
        );
        // Her quota was given back with the channels: she starts afresh.
        r.session_up(udp(1), party(1, "alice"));
        assert!(r.allocate(now, &udp(1), DeviceId([2; 16])).is_ok());
    }

    #[test]
    fn nat_rebinding_keeps_forwarding() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        relayed(&mut r, now, &udp(1), &frame(ch, b"x")).unwrap();
        relayed(&mut r, now, &udp(2), &frame(ch, b"x")).unwrap();
        // Bob's NAT gives him a new port.
        assert!(r.session_moved(&udp(2), udp_port(2, 50_000)).is_empty());
        assert_eq!(
            relayed(&mut r, now, &udp(1), &frame(ch, b"x")),
            Some(udp_port(2, 50_000))
        );
        assert_eq!(
            relayed(&mut r, now, &udp_port(2, 50_000), &frame(ch, b"y")),
            Some(udp(1))
        );
        // The old address is nobody's now.
        assert_eq!(r.forward(now, &udp(2), &frame(ch, b"x")), None);
        assert_eq!(r.stats().dropped_not_party, 1);
        // Moving an unknown session does nothing.
        assert!(r.session_moved(&udp(2), udp(9)).is_empty());
        assert_eq!(r.forward(now, &udp(9), &frame(ch, b"x")), None);
    }

    #[test]
    fn leg_follows_the_transport_last_used() {
        let now = Instant::now();
        let mut r = Relay::new(cfg());
        // Alice first over TCP, then UDP too; Bob over UDP.
        r.session_up(tcp(1), party(1, "alice"));
        r.session_up(udp(2), party(2, "bob"));
        let ch = r.allocate(now, &udp(2), DeviceId([1; 16])).unwrap();
        assert_eq!(ch.peer, tcp(1));
        let ch = ch.channel;
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(tcp(1))
        );
        // Her UDP session comes up: the most recent, so she hears there until she speaks.
        r.session_up(udp(1), party(1, "alice"));
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(udp(1))
        );
        // She sends over TCP: she hears over TCP.
        assert_eq!(
            relayed(&mut r, now, &tcp(1), &frame(ch, b"x")),
            Some(udp(2))
        );
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(tcp(1))
        );
        // Then over UDP: UDP.
        assert_eq!(
            relayed(&mut r, now, &udp(1), &frame(ch, b"x")),
            Some(udp(2))
        );
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(udp(1))
        );
        // Re-registering TCP makes it the most recent, but she is still heard on UDP.
        r.session_up(tcp(1), party(1, "alice"));
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(udp(1))
        );
    }

    #[test]
    fn taking_over_an_address_releases_the_old_owner() {
        let now = Instant::now();
        let (mut r, ch) = pair(now);
        // Bob's address is registered to Carol without a session_down: Bob's only session.
        let gone = r.session_up(udp(2), party(3, "carol"));
        assert_eq!(
            gone,
            vec![Released {
                channel: ch,
                notify: udp(1),
                reason: ReleaseReason::PartyGone
            }]
        );
        assert_eq!(r.channels(), 0);
        // Same through a move onto it.
        r.session_up(udp(2), party(2, "bob"));
        let gone = r.session_up(udp(4), party(2, "bob"));
        assert!(gone.is_empty());
        let ch = r.allocate(now, &udp(1), DeviceId([2; 16])).unwrap().channel;
        let gone = r.session_moved(&udp(1), udp(2));
        assert!(gone.is_empty()); // Bob still had udp(4)
        assert_eq!(
            relayed(&mut r, now, &udp(4), &frame(ch, b"x")),
            Some(udp(2))
        );
        assert_eq!(
            relayed(&mut r, now, &udp(2), &frame(ch, b"x")),
            Some(udp(4))
        );
    }

    #[test]
    fn channel_ids_are_31_bit_unique_and_seeded() {
        let now = Instant::now();
        let build = || {
            let mut r = Relay::new(cfg());
            let mut ids = Vec::new();
            for d in 0..100u8 {
                r.session_up(udp(d), party(d, &format!("user{d}")));
            }
            for d in (0..100u8).step_by(2) {
                ids.push(
                    r.allocate(now, &udp(d), DeviceId([d + 1; 16]))
                        .unwrap()
                        .channel,
                );
            }
            ids
        };
        let ids = build();
        assert!(ids.iter().all(|&c| c != 0 && c & TO_PARTY == 0));
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert_eq!(build(), ids);
    }

    #[test]
    fn relay_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Relay>();
    }

    /// Two channels among four parties with TCP and UDP sessions, and sources to draw from.
    fn scene(now: Instant) -> (Relay, [u32; 2], Vec<Destination>) {
        let mut r = Relay::new(cfg());
        r.session_up(udp(1), party(1, "alice"));
        r.session_up(tcp(1), party(1, "alice"));
        r.session_up(udp(2), party(2, "bob"));
        r.session_up(udp(3), party(3, "carol"));
        r.session_up(tcp(4), party(4, "dave"));
        let a = r.allocate(now, &udp(1), DeviceId([2; 16])).unwrap().channel;
        let b = r.allocate(now, &udp(3), DeviceId([4; 16])).unwrap().channel;
        let sources = vec![udp(1), tcp(1), udp(2), udp(3), tcp(4), udp(5), tcp(5)];
        (r, [a, b], sources)
    }

    proptest! {
        /// Whatever is sent from wherever, an output is exactly as long as its input, differs
        /// only in the direction bit, and goes to the other party of the frame's channel.
        #[test]
        fn output_is_the_input_with_one_bit_flipped(
            frames in proptest::collection::vec(
                (0usize..7, any::<bool>(), 0usize..2,
                 proptest::collection::vec(any::<u8>(), 0..1300)),
                1..40),
        ) {
            let now = Instant::now();
            let (mut r, chans, sources) = scene(now);
            let mut t = now;
            for (src, valid_header, ch, payload) in frames {
                t += Duration::from_millis(20);
                let from = &sources[src];
                let f = if valid_header { frame(chans[ch], &payload) } else { payload };
                if let Some((to, out)) = r.forward(t, from, &f) {
                    prop_assert_eq!(out.len(), f.len());
                    prop_assert_eq!(out[1], f[1] | 0x80);
                    prop_assert_eq!(&out[..1], &f[..1]);
                    prop_assert_eq!(&out[2..], &f[2..]);
                    prop_assert!(f.len() <= cfg().max_frame);
                    prop_assert!(valid_header);
                    // From a party of the channel, to the other one.
                    let party_of = |d: &Destination| match d {
                        Destination::Udp(a) => a.ip().to_string(),
                        Destination::Stream(s) => format!("198.51.100.{}", s.0),
                    };
                    let expected = if ch == 0 { ["198.51.100.1", "198.51.100.2"] }
                                   else { ["198.51.100.3", "198.51.100.4"] };
                    let (a, b) = (party_of(from), party_of(&to));
                    prop_assert!(a != b);
                    prop_assert!(expected.contains(&a.as_str()) && expected.contains(&b.as_str()));
                }
            }
        }

        /// Arbitrary bytes from registered and unregistered sources, channel ids live or not,
        /// interleaved with session changes and timeouts: no panic, every frame counted once.
        #[test]
        fn arbitrary_input_never_panics(
            ops in proptest::collection::vec(
                (0u8..10, 0usize..7, 0usize..7, any::<u32>(),
                 proptest::collection::vec(any::<u8>(), 0..40)),
                1..200),
        ) {
            let t0 = Instant::now();
            let (mut r, chans, sources) = scene(t0);
            let mut t = t0;
            let mut frames = 0u64;
            for (op, a, b, word, bytes) in ops {
                t += Duration::from_millis(u64::from(word % 4000));
                match op {
                    0..=4 => {
                        let f = match op {
                            0 => bytes,
                            1 => frame(word, &bytes),
                            _ => frame(chans[a % 2] | (word & TO_PARTY & u32::from(op == 4)), &bytes),
                        };
                        frames += 1;
                        if let Some((_, out)) = r.forward(t, &sources[a], &f) {
                            prop_assert_eq!(out.len(), f.len());
                        }
                    }
                    5 => { r.session_down(t, &sources[a]); }
                    6 => { r.session_moved(&sources[a], sources[b].clone()); }
                    7 => {
                        let d = (b % 6) as u8 + 1;
                        r.session_up(sources[a].clone(), party(d, &format!("user{}", d % 3)));
                    }
                    8 => {
                        let _ = r.allocate(t, &sources[a], DeviceId([(b % 6) as u8 + 1; 16]));
                        let _ = r.release(t, &sources[b], word);
                    }
                    _ => { r.handle_timeout(t); }
                }
                prop_assert!(r.channels() <= cfg().max_channels);
                assert_charges_match(&r);
                if r.poll_timeout().is_some() {
                    prop_assert!(r.channels() > 0);
                }
            }
            let s = r.stats();
            prop_assert_eq!(
                s.relayed_packets + s.dropped_malformed + s.dropped_unknown_channel
                    + s.dropped_not_party + s.dropped_rate,
                frames
            );
        }
    }
}
