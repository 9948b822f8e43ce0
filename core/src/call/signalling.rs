//! Call signalling: one device's calls, as a sans-IO state machine.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::crypto::{DeviceId, UnixTime, UserName};
use crate::rng::Rng;
pub use crate::wire::message::CallId;
use crate::wire::message::Message;

/// Most devices one call invites.
pub const MAX_CALLEE_DEVICES: usize = 8;
/// Ended calls remembered for [`CallMachine::state`] and for answering late messages.
const ENDED_MEMORY: usize = 16;

/// Tuning of a [`CallMachine`].
#[derive(Debug, Clone)]
pub struct CallConfig {
    /// Seed for call ids and nonces.
    pub seed: [u8; 32],
    /// The wall clock at the `now` given to [`CallMachine::new`] (invite timestamps).
    pub wall_anchor: UnixTime,
    /// This device's media capability bits, sent in invites and answers.
    pub media: u8,
    /// How long a call rings before it is missed (45 s).
    pub ring_timeout: Duration,
    /// Silence after which the peer is gone (5 s).
    pub peer_timeout: Duration,
    /// Keep-alive period of an active call (1 s).
    pub keepalive_interval: Duration,
    /// Retransmission period of invites and answers (1 s).
    pub retransmit_interval: Duration,
    /// Oldest invite accepted, by its timestamp (60 s).
    pub max_invite_age: Duration,
    /// How far in the future an invite's timestamp may be (30 s).
    pub max_skew: Duration,
    /// Most invites remembered for replay protection, over all devices (1024); also the most
    /// devices with a replay floor of their own. See [`CallMachine`].
    pub max_seen: usize,
    /// Most invites remembered from one device (16): its next invite evicts its own oldest,
    /// so one device flooding invites cannot evict (and raise the floor of) any other.
    pub max_seen_per_device: usize,
}

impl CallConfig {
    /// Defaults with this seed and wall clock.
    pub fn new(seed: [u8; 32], wall_anchor: UnixTime) -> Self {
        Self {
            seed,
            wall_anchor,
            media: 1,
            ring_timeout: Duration::from_secs(45),
            peer_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            retransmit_interval: Duration::from_secs(1),
            max_invite_age: Duration::from_secs(60),
            max_skew: Duration::from_secs(30),
            max_seen: 1024,
            max_seen_per_device: 16,
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// An active call was hung up (`local`: by this device).
    HungUp {
        /// This device hung up.
        local: bool,
    },
    /// The callee declined (`local`: this device declined).
    Declined {
        /// This device declined.
        local: bool,
    },
    /// Every invited device is in another call.
    Busy,
    /// The caller gave up before an answer (`local`: this device was the caller).
    Cancelled {
        /// This device cancelled.
        local: bool,
    },
    /// Nobody answered within the ring timeout.
    Missed,
    /// No signalling or media from the peer for the peer timeout.
    PeerVanished,
    /// Another device of this user answered.
    AnsweredElsewhere,
}

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// This device calls; `ringing` once a callee device rings.
    Outgoing {
        /// At least one callee device is ringing.
        ringing: bool,
    },
    /// An incoming call rings here.
    Incoming,
    /// This device answered and waits for the caller's confirmation.
    Answering,
    /// Connected.
    Active {
        /// This device holds the call.
        local_hold: bool,
        /// The peer holds the call.
        remote_hold: bool,
    },
    /// Over.
    Ended(EndReason),
}

/// What the application hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// A call rings here.
    Incoming {
        /// Which call.
        call: CallId,
        /// The caller.
        user: UserName,
        /// The caller's device.
        device: DeviceId,
        /// The caller's media capabilities.
        media: u8,
    },
    /// A callee device rings (once per device).
    Ringing {
        /// Which call.
        call: CallId,
        /// The ringing device.
        device: DeviceId,
    },
    /// The call is connected to `device`.
    Connected {
        /// Which call.
        call: CallId,
        /// The peer device.
        device: DeviceId,
        /// The peer's media capabilities.
        media: u8,
    },
    /// The hold state changed.
    HoldChanged {
        /// Which call.
        call: CallId,
        /// This device holds the call.
        local_hold: bool,
        /// The peer holds the call.
        remote_hold: bool,
    },
    /// Glare: our outgoing call `dropped` was merged into the incoming call `kept`, which
    /// this device answered automatically. `dropped` gets no `Ended` event.
    GlareMerged {
        /// Our own call, abandoned.
        dropped: CallId,
        /// The call that continues.
        kept: CallId,
    },
    /// An invite was refused with Busy because this device is in a call, or does not want
    /// to be disturbed.
    RejectedBusy {
        /// The refused call.
        call: CallId,
        /// Who called.
        user: UserName,
    },
    /// The call ended.
    Ended {
        /// Which call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
}

/// A call message to send to one peer device (over its session, or through a super node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallTransmit {
    /// The destination device.
    pub device: DeviceId,
    /// The message; encode it with [`Message::encode`].
    pub message: Message<'static>,
}

/// Why a command was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// This device already has a call.
    #[error("already in a call")]
    InCall,
    /// No device to invite.
    #[error("no device to invite")]
    NoDevices,
    /// More than [`MAX_CALLEE_DEVICES`] devices.
    #[error("too many devices")]
    TooManyDevices,
    /// Not the current call.
    #[error("unknown call")]
    UnknownCall,
    /// The command does not apply in the call's state.
    #[error("not possible in this call state")]
    WrongState,
}

/// Counters of dropped and notable input. Nothing here is ever a panic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Invites with a known call id that are not retransmissions.
    pub replayed_invites: u64,
    /// Invites too old, from the future, or at or below a replay floor (their device's, or the
    /// one for all devices).
    pub stale_invites: u64,
    /// Retransmitted invites answered again.
    pub duplicate_invites: u64,
    /// Invites refused with Busy.
    pub busy_rejected: u64,
    /// Glare cases resolved (either side).
    pub glare: u64,
    /// Messages about a call this device does not have.
    pub unknown_call: u64,
    /// Messages from a device that is not part of the call (or an invite whose caller field
    /// is not the session's device).
    pub unexpected_device: u64,
    /// Messages that do not apply in the call's state.
    pub wrong_state: u64,
    /// Answers that lost to another device's answer.
    pub late_answers: u64,
    /// Replay-protection entries evicted, whatever the limit (`max_seen` or
    /// `max_seen_per_device`); each raised the floor of its device.
    pub seen_evictions: u64,
    /// Of [`CallStats::seen_evictions`], those for `max_seen_per_device`: a device inviting
    /// this one more often than it could answer.
    pub seen_device_evictions: u64,
    /// Per-device floors folded into the floor for all devices because `max_seen` devices
    /// held one: each may refuse other devices' old invites (see [`CallMachine`]).
    pub global_floor_raises: u64,
    /// Non-call messages handed to the machine.
    pub not_call: u64,
    /// Decline or hang-up said again because the peer went on as if it was lost.
    pub repeated_endings: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Outgoing,
    Incoming,
    Answering,
    Active,
}

#[derive(Debug, Clone, Copy)]
struct Callee {
    device: DeviceId,
    ringing: bool,
    busy: bool,
}

#[derive(Debug)]
struct Call {
    id: CallId,
    user: UserName,
    outgoing: bool,
    phase: Phase,
    /// Outgoing: the invited devices.
    callees: Vec<Callee>,
    nonce: u64,
    timestamp: UnixTime,
    /// Incoming: the caller's device; outgoing: the device that won, once answered.
    peer: Option<DeviceId>,
    local_hold: bool,
    remote_hold: bool,
    ring_deadline: Instant,
    last_heard: Instant,
    next_send: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    from: DeviceId,
    nonce: u64,
    /// The invite's timestamp: the entry is kept while the age check would let it pass.
    timestamp: UnixTime,
    busy: bool,
}

#[derive(Debug, Clone)]
struct Ended {
    id: CallId,
    reason: EndReason,
    outgoing: bool,
    user: UserName,
}

/// One device's call signalling machine.
///
/// Call signalling: one device's calls, as a sans-IO state machine.
///
/// [`CallMachine`] runs on every device. It sees call messages ([`Message::CallInvite`] and the
/// rest of the `0x40` range) that arrived over authenticated sessions, with the peer's user
/// name and device id the session proved, and produces messages to send to peer devices
/// ([`CallTransmit`]), events for the application ([`CallEvent`]) and one deadline. It never
/// touches a socket or a clock: the owner feeds `now` into every call.
///
/// | kind | method |
/// |---|---|
/// | input | [`CallMachine::handle_message`] (a call message from a peer device) |
/// | input | [`CallMachine::handle_heard`] (the transport heard from a device: media, keep-alive) |
/// | input | [`CallMachine::handle_timeout`] |
/// | command | [`CallMachine::call`], [`CallMachine::answer`], [`CallMachine::decline`], [`CallMachine::hang_up`], [`CallMachine::hold`], [`CallMachine::resume`] |
/// | output | [`CallMachine::poll_transmit`], [`CallMachine::poll_event`], [`CallMachine::poll_timeout`] |
///
/// Drain order is the crate's: transmits, then events, then the deadline once.
///
/// # States
///
/// ```text
///                call()                          Answer from a callee device (first wins;
///   idle ───────────────────► Outgoing ─────────► the caller confirms with Answer, tells the
///    │                        (inviting, then      others AnsweredElsewhere) ──────┐
///    │                         ringing)                                              │
///    │                          │ Decline / all Busy / ring timeout / hang_up        ▼
///    │                          └──────────► Ended(Declined | Busy | Missed |     Active ◄──┐
///    │ Invite                                      Cancelled)               (hold/resume: │
///    ▼                answer()                                               local and    │
///  Incoming ───────────────────► Answering ── caller's Answer (confirm) ──► remote flags)─┘
///  (ringing)                        │                                          │
///    │ decline() / Cancel /         │ AnsweredElsewhere / Cancel /             │ Hangup / hang_up()
///    │ AnsweredElsewhere /          │ no confirmation within peer_timeout      │ / silence for
///    │ ring timeout / caller silent ▼                                          ▼ peer_timeout
///    └─────────────────────► Ended(Declined | Cancelled | AnsweredElsewhere | Missed |
///                                  PeerVanished | HungUp)
/// ```
///
/// A device has at most one call. An invite that arrives while it has one is answered
/// [`Message::CallBusy`] (no call waiting), except in glare (below).
///
/// # Multi-device
///
/// [`CallMachine::call`] invites every device of the callee. Each device rings and answers
/// [`Message::CallRinging`]. The **first** [`Message::CallAnswer`] to reach the caller wins:
/// the caller sends `CallAnswer` back to that device (the confirmation that moves it from
/// Answering to Active) and [`Message::CallAnsweredElsewhere`] to every other invited device,
/// which stops ringing ([`EndReason::AnsweredElsewhere`]). A device whose answer arrives later
/// gets `CallAnsweredElsewhere` too. One `Decline` from any device declines the call for the
/// user (the others get `CallCancel`); `Busy` removes one device, and the call ends Busy when
/// every invited device is busy.
///
/// # Glare
///
/// When a device with an unanswered outgoing call to user U gets an invite from U, the call
/// with the **lower call id** (byte order) survives, on both sides, without another round
/// trip: if the incoming call's id is lower, the device cancels its own call (to all of U's
/// devices), reports [`CallEvent::GlareMerged`] and answers the incoming call automatically;
/// otherwise it ignores the incoming invite (no Busy, which would race) and waits for U's
/// device to do the mirror image and answer. Both sides end up in the same single call.
///
/// # Replay protection
///
/// Invites carry the caller's wall-clock time; one older than `max_invite_age` (60 s) or more
/// than `max_skew` (30 s) in the future is dropped. Every accepted invite's call id is
/// remembered with its nonce until the invite could no longer pass the age check. A repeated
/// (call id, nonce) from the same device while that call still rings is a retransmission and
/// is answered again (Ringing or Busy) without ringing twice; anything else with a known call
/// id is a replay and is dropped. Every drop is counted in [`CallStats`].
///
/// The memory is bounded, and what it forgets it refuses wholesale: an evicted entry raises a
/// timestamp **floor** for the device that sent it, and an invite not remembered from that
/// device with a timestamp at or below its floor is refused, so an evicted invite replayed
/// later is still refused. Floors are per device so that one device cannot shut out the
/// others:
///
/// * a device has at most `max_seen_per_device` (16) entries; its next invite evicts its own
///   oldest one and raises its own floor. A device that floods invites only raises the floor
///   under its own invites;
/// * all devices together have at most `max_seen` (1024); when full, the oldest entry is
///   evicted and the floor of *its* device raised. The current incoming call's entry is evicted
///   last, so its caller's retransmissions are still answered;
/// * at most `max_seen` devices have a floor, each forgotten once the age check refuses every
///   invite under it. When every slot is taken, the lowest floor is folded into a floor for all
///   devices (counted in [`CallStats::global_floor_raises`]): the one fallback that refuses
///   other devices' invites, and then only those stamped at or below the lowest floor.
///
/// # Liveness
///
/// The caller retransmits invites every `retransmit_interval` (1 s) to devices that have not
/// answered Ringing and sends [`Message::CallKeepAlive`] to the ringing ones; a ringing device
/// whose caller stays silent for `peer_timeout` (5 s) stops ringing ([`EndReason::PeerVanished`]).
/// In a call both sides send `CallKeepAlive` every `keepalive_interval` (1 s), carrying their
/// own hold flag (which repairs a lost Hold or Resume), and the call ends PeerVanished after
/// `peer_timeout` of silence; [`CallMachine::handle_heard`] lets the owner count media
/// packets as signs of life too.
#[derive(Debug)]
pub struct CallMachine {
    device: DeviceId,
    cfg: CallConfig,
    rng: Rng,
    start: Instant,
    call: Option<Call>,
    /// Accepted invites, until the age check refuses them: at most `max_seen`, and
    /// `max_seen_per_device` from one device.
    seen: BTreeMap<CallId, Seen>,
    /// Per device, the highest timestamp evicted from `seen`: its invites not in `seen` with
    /// a timestamp at or below it are refused. At most `max_seen` devices; dropped once the
    /// age check refuses everything at or below it.
    floors: BTreeMap<DeviceId, UnixTime>,
    /// The same for every device: per-device floors folded in when `floors` was full.
    floor: Option<UnixTime>,
    ended: VecDeque<Ended>,
    transmits: VecDeque<CallTransmit>,
    events: VecDeque<CallEvent>,
    stats: CallStats,
    /// Do not disturb: invites are refused with Busy, as in a call.
    do_not_disturb: bool,
}

impl CallMachine {
    /// A machine for `device`, created at `now` (when the wall clock read
    /// `cfg.wall_anchor`).
    pub fn new(device: DeviceId, cfg: CallConfig, now: Instant) -> Self {
        Self {
            device,
            rng: Rng::from_seed_bytes(cfg.seed),
            cfg,
            start: now,
            call: None,
            seen: BTreeMap::new(),
            floors: BTreeMap::new(),
            floor: None,
            ended: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: CallStats::default(),
            do_not_disturb: false,
        }
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Do not disturb (or, with `false`, ring again): from now on invites are refused with
    /// Busy, as when this device is in a call ([`CallEvent::RejectedBusy`] reports each).
    pub fn set_do_not_disturb(&mut self, on: bool) {
        self.do_not_disturb = on;
    }

    /// Drop counters.
    pub fn stats(&self) -> CallStats {
        self.stats
    }

    /// The current call, if any.
    pub fn current(&self) -> Option<CallId> {
        self.call.as_ref().map(|c| c.id)
    }

    /// Where `call` stands: the current call, or one of the last ended ones.
    pub fn state(&self, call: CallId) -> Option<CallState> {
        if let Some(c) = self.call.as_ref().filter(|c| c.id == call) {
            return Some(match c.phase {
                Phase::Outgoing => CallState::Outgoing {
                    ringing: c.callees.iter().any(|d| d.ringing),
                },
                Phase::Incoming => CallState::Incoming,
                Phase::Answering => CallState::Answering,
                Phase::Active => CallState::Active {
                    local_hold: c.local_hold,
                    remote_hold: c.remote_hold,
                },
            });
        }
        self.ended
            .iter()
            .find(|e| e.id == call)
            .map(|e| CallState::Ended(e.reason))
    }

    fn wall(&self, now: Instant) -> UnixTime {
        UnixTime(self.cfg.wall_anchor.0 + now.saturating_duration_since(self.start).as_secs())
    }

    /// An invite stamped `timestamp` fails the age check at `wall`.
    fn too_old(&self, timestamp: UnixTime, wall: UnixTime) -> bool {
        timestamp
            .0
            .saturating_add(self.cfg.max_invite_age.as_secs())
            < wall.0
    }

    /// Forget what the age check now covers: remembered invites (kept exactly as long as it
    /// lets them pass: `wall` is whole seconds, so a fixed time after arrival could be a second
    /// short), and floors under which it refuses every invite.
    fn forget_old(&mut self, wall: UnixTime) {
        let age = self.cfg.max_invite_age.as_secs();
        let young = |t: &UnixTime| t.0.saturating_add(age) >= wall.0;
        self.seen.retain(|_, s| young(&s.timestamp));
        self.floors.retain(|_, f| young(f));
        if self.floor.is_some_and(|f| !young(&f)) {
            self.floor = None;
        }
    }

    /// An invite from `device` stamped `timestamp`, not remembered, may have been evicted.
    fn under_floor(&self, device: DeviceId, timestamp: UnixTime) -> bool {
        self.floor.is_some_and(|f| timestamp <= f)
            || self.floors.get(&device).is_some_and(|&f| timestamp <= f)
    }

    /// Make room in `seen` for an invite from `device`: evict its own oldest entry when it has
    /// `max_seen_per_device`, else the oldest of all when there are `max_seen`.
    fn make_room(&mut self, device: DeviceId) {
        let mine = self.seen.values().filter(|s| s.from == device).count();
        if mine >= self.cfg.max_seen_per_device.max(1) {
            self.evict_oldest(Some(device));
            self.stats.seen_device_evictions += 1;
        } else if self.seen.len() >= self.cfg.max_seen.max(1) {
            self.evict_oldest(None);
        }
    }

    /// Evict the oldest entry (of `device`, or of all) and raise the floor of its device. The
    /// current incoming call's entry goes last, so its caller's retransmissions are answered.
    fn evict_oldest(&mut self, device: Option<DeviceId>) {
        let current = self.call.as_ref().filter(|c| !c.outgoing).map(|c| c.id);
        let Some((&id, &s)) = self
            .seen
            .iter()
            .filter(|(_, s)| device.is_none_or(|d| s.from == d))
            .min_by_key(|(&id, s)| (Some(id) == current, s.timestamp, id))
        else {
            return;
        };
        self.seen.remove(&id);
        self.stats.seen_evictions += 1;
        self.raise_floor(s.from, s.timestamp);
    }

    /// Refuse `device`'s invites stamped at or below `timestamp` that are not remembered.
    fn raise_floor(&mut self, device: DeviceId, timestamp: UnixTime) {
        if let Some(f) = self.floors.get_mut(&device) {
            *f = (*f).max(timestamp);
            return;
        }
        if self.floors.len() < self.cfg.max_seen.max(1) {
            self.floors.insert(device, timestamp);
            return;
        }
        // Every slot taken: the lowest floor, this one or a held one, goes to all devices.
        self.stats.global_floor_raises += 1;
        let mut lowest = timestamp;
        if let Some((&d, &f)) = self.floors.iter().min_by_key(|(&d, &f)| (f, d)) {
            if f < timestamp {
                self.floors.remove(&d);
                self.floors.insert(device, timestamp);
                lowest = f;
            }
        }
        self.floor = Some(self.floor.map_or(lowest, |f| f.max(lowest)));
    }

    fn send(&mut self, device: DeviceId, message: Message<'static>) {
        self.transmits.push_back(CallTransmit { device, message });
    }

    fn end(&mut self, reason: EndReason) {
        if let Some(c) = self.call.take() {
            if self.ended.len() == ENDED_MEMORY {
                self.ended.pop_front();
            }
            self.ended.push_back(Ended {
                id: c.id,
                reason,
                outgoing: c.outgoing,
                user: c.user,
            });
            self.events
                .push_back(CallEvent::Ended { call: c.id, reason });
        }
    }

    /// Tell every invited device that is not busy (except `except`) this message.
    fn tell_callees(&mut self, except: Option<DeviceId>, msg: Message<'static>) {
        let devices: Vec<DeviceId> = match &self.call {
            Some(c) => c
                .callees
                .iter()
                .filter(|d| !d.busy && Some(d.device) != except)
                .map(|d| d.device)
                .collect(),
            None => return,
        };
        for d in devices {
            self.send(d, msg.clone());
        }
    }

    // ---- commands ----

    /// Call `user` on every one of `devices` (duplicates and this device are skipped).
    pub fn call(
        &mut self,
        now: Instant,
        user: UserName,
        devices: &[DeviceId],
    ) -> Result<CallId, CallError> {
        if self.call.is_some() {
            return Err(CallError::InCall);
        }
        let mut callees: Vec<Callee> = Vec::new();
        for d in devices {
            if *d != self.device && !callees.iter().any(|c| c.device == *d) {
                callees.push(Callee {
                    device: *d,
                    ringing: false,
                    busy: false,
                });
            }
        }
        if callees.is_empty() {
            return Err(CallError::NoDevices);
        }
        if callees.len() > MAX_CALLEE_DEVICES {
            return Err(CallError::TooManyDevices);
        }
        let mut id = [0u8; 16];
        self.rng.fill(&mut id);
        let call = Call {
            id: CallId(id),
            user,
            outgoing: true,
            phase: Phase::Outgoing,
            callees,
            nonce: self.rng.u64(),
            timestamp: self.wall(now),
            peer: None,
            local_hold: false,
            remote_hold: false,
            ring_deadline: now + self.cfg.ring_timeout,
            last_heard: now,
            next_send: now + self.cfg.retransmit_interval,
        };
        let invite = self.invite(&call);
        let devices: Vec<DeviceId> = call.callees.iter().map(|c| c.device).collect();
        self.call = Some(call);
        for d in devices {
            self.send(d, invite.clone());
        }
        Ok(CallId(id))
    }

    fn invite(&self, c: &Call) -> Message<'static> {
        Message::CallInvite {
            call: c.id,
            caller: self.device,
            nonce: c.nonce,
            media: self.cfg.media,
            timestamp: c.timestamp,
        }
    }

    fn current_mut(&mut self, call: CallId) -> Result<&mut Call, CallError> {
        self.call
            .as_mut()
            .filter(|c| c.id == call)
            .ok_or(CallError::UnknownCall)
    }

    /// Answer the incoming call that rings here.
    pub fn answer(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        let media = self.cfg.media;
        let interval = self.cfg.retransmit_interval;
        let c = self.current_mut(call)?;
        if c.phase != Phase::Incoming {
            return Err(CallError::WrongState);
        }
        c.phase = Phase::Answering;
        c.last_heard = now;
        c.next_send = now + interval;
        let peer = c.peer.expect("incoming calls have a peer");
        self.send(peer, Message::CallAnswer { call, media });
        Ok(())
    }

    /// Decline the incoming call that rings here.
    pub fn decline(&mut self, _now: Instant, call: CallId) -> Result<(), CallError> {
        let c = self.current_mut(call)?;
        if c.phase != Phase::Incoming {
            return Err(CallError::WrongState);
        }
        let peer = c.peer.expect("incoming calls have a peer");
        self.send(peer, Message::CallDecline { call });
        self.end(EndReason::Declined { local: true });
        Ok(())
    }

    /// End the call whatever its state: cancel an outgoing call, decline an incoming one,
    /// hang up a connected (or answering) one.
    pub fn hang_up(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        let c = self.current_mut(call)?;
        match c.phase {
            Phase::Outgoing => {
                self.tell_callees(None, Message::CallCancel { call });
                self.end(EndReason::Cancelled { local: true });
            }
            Phase::Incoming => return self.decline(now, call),
            Phase::Answering | Phase::Active => {
                let peer = c.peer.expect("connected calls have a peer");
                self.send(peer, Message::CallHangup { call });
                self.end(EndReason::HungUp { local: true });
            }
        }
        Ok(())
    }

    /// Put the active call on hold.
    pub fn hold(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.set_hold(now, call, true)
    }

    /// Take the active call off hold.
    pub fn resume(&mut self, now: Instant, call: CallId) -> Result<(), CallError> {
        self.set_hold(now, call, false)
    }

    fn set_hold(&mut self, _now: Instant, call: CallId, hold: bool) -> Result<(), CallError> {
        let c = self.current_mut(call)?;
        if c.phase != Phase::Active {
            return Err(CallError::WrongState);
        }
        let changed = c.local_hold != hold;
        c.local_hold = hold;
        let (peer, remote_hold) = (c.peer.expect("active calls have a peer"), c.remote_hold);
        let msg = if hold {
            Message::CallHold { call }
        } else {
            Message::CallResume { call }
        };
        self.send(peer, msg);
        if changed {
            self.events.push_back(CallEvent::HoldChanged {
                call,
                local_hold: hold,
                remote_hold,
            });
        }
        Ok(())
    }

    // ---- inputs ----

    /// The owner heard from `device` (media, a session keep-alive): the call with it is alive.
    pub fn handle_heard(&mut self, now: Instant, device: DeviceId) {
        if let Some(c) = self.call.as_mut() {
            if c.peer == Some(device) {
                c.last_heard = now;
            }
        }
    }

    /// A call message from `device` of `user` (as its session proved them). Returns false
    /// (and counts it) when `msg` is not a call message.
    pub fn handle_message(
        &mut self,
        now: Instant,
        device: DeviceId,
        user: &UserName,
        msg: &Message<'_>,
    ) -> bool {
        let (call, kind) = match *msg {
            Message::CallInvite {
                call,
                caller,
                nonce,
                media,
                timestamp,
            } => {
                self.on_invite(now, device, user, call, caller, nonce, media, timestamp);
                return true;
            }
            Message::CallRinging { call } => (call, Kind::Ringing),
            Message::CallAnswer { call, media } => (call, Kind::Answer(media)),
            Message::CallDecline { call } => (call, Kind::Decline),
            Message::CallBusy { call } => (call, Kind::Busy),
            Message::CallCancel { call } => (call, Kind::Cancel),
            Message::CallHangup { call } => (call, Kind::Hangup),
            Message::CallHold { call } => (call, Kind::Hold(true)),
            Message::CallResume { call } => (call, Kind::Hold(false)),
            Message::CallAnsweredElsewhere { call } => (call, Kind::AnsweredElsewhere),
            Message::CallKeepAlive { call, held } => (call, Kind::KeepAlive(held)),
            _ => {
                self.stats.not_call += 1;
                return false;
            }
        };
        let Some(c) = self.call.as_mut().filter(|c| c.id == call) else {
            self.on_unknown(device, user, call, kind);
            return true;
        };
        if c.outgoing {
            self.on_outgoing(now, device, kind);
        } else {
            self.on_incoming(now, device, kind);
        }
        true
    }

    fn on_unknown(&mut self, device: DeviceId, user: &UserName, call: CallId, kind: Kind) {
        let ended = self.ended.iter().find(|e| e.id == call);
        match (ended, kind) {
            // A callee device answers a call that is over here: tell it so.
            (Some(e), Kind::Answer(_)) if e.outgoing && &e.user == user => {
                self.stats.late_answers += 1;
                let msg = if matches!(e.reason, EndReason::HungUp { .. }) {
                    Message::CallAnsweredElsewhere { call }
                } else {
                    Message::CallCancel { call }
                };
                self.send(device, msg);
            }
            // The peer still thinks the call is on (keep-alive, hold): our hang-up was lost.
            (Some(e), Kind::KeepAlive(_) | Kind::Hold(_)) if &e.user == user => {
                let (outgoing, user) = (e.outgoing, e.user.clone());
                if let Some(word) = self.final_word(call, &user, outgoing) {
                    self.send(device, word);
                } else {
                    self.stats.wrong_state += 1;
                }
            }
            (Some(_), _) => self.stats.wrong_state += 1,
            (None, _) => self.stats.unknown_call += 1,
        }
    }

    /// What to say again to a peer that goes on with `call` (invites, keep-alives), which
    /// ended here (`outgoing`: this device was the caller): a lost decline or hang-up is
    /// repeated; a call that ended otherwise needs no answer.
    fn final_word(
        &mut self,
        call: CallId,
        user: &UserName,
        outgoing: bool,
    ) -> Option<Message<'static>> {
        let e = self
            .ended
            .iter()
            .find(|e| e.id == call && e.outgoing == outgoing && &e.user == user)?;
        let word = match e.reason {
            EndReason::Declined { local: true } if !outgoing => Message::CallDecline { call },
            EndReason::HungUp { local: true } => Message::CallHangup { call },
            EndReason::PeerVanished if !outgoing => Message::CallHangup { call },
            _ => return None,
        };
        self.stats.repeated_endings += 1;
        Some(word)
    }

    fn on_outgoing(&mut self, now: Instant, device: DeviceId, kind: Kind) {
        let media = self.cfg.media;
        let keepalive = self.cfg.keepalive_interval;
        let Some(c) = self.call.as_mut() else { return };
        let call = c.id;
        let Some(i) = c.callees.iter().position(|d| d.device == device) else {
            self.stats.unexpected_device += 1;
            return;
        };
        if c.phase == Phase::Active {
            if c.peer != Some(device) {
                // Another device of the callee: its answer came too late.
                if let Kind::Answer(_) = kind {
                    self.stats.late_answers += 1;
                    self.send(device, Message::CallAnsweredElsewhere { call });
                } else {
                    self.stats.wrong_state += 1;
                }
                return;
            }
            self.on_active(now, kind);
            return;
        }
        // Outgoing, not answered yet.
        if c.callees[i].busy {
            self.stats.wrong_state += 1;
            return;
        }
        match kind {
            Kind::Ringing => {
                if !c.callees[i].ringing {
                    c.callees[i].ringing = true;
                    self.events.push_back(CallEvent::Ringing { call, device });
                }
            }
            Kind::Answer(peer_media) => {
                c.phase = Phase::Active;
                c.peer = Some(device);
                c.last_heard = now;
                c.next_send = now + keepalive;
                self.send(device, Message::CallAnswer { call, media });
                self.tell_callees(Some(device), Message::CallAnsweredElsewhere { call });
                self.events.push_back(CallEvent::Connected {
                    call,
                    device,
                    media: peer_media,
                });
            }
            Kind::Decline => {
                self.tell_callees(Some(device), Message::CallCancel { call });
                self.end(EndReason::Declined { local: false });
            }
            Kind::Busy => {
                c.callees[i].busy = true;
                if c.callees.iter().all(|d| d.busy) {
                    self.end(EndReason::Busy);
                }
            }
            Kind::KeepAlive(_) => {}
            _ => self.stats.wrong_state += 1,
        }
    }

    fn on_incoming(&mut self, now: Instant, device: DeviceId, kind: Kind) {
        let Some(c) = self.call.as_mut() else { return };
        if c.peer != Some(device) {
            self.stats.unexpected_device += 1;
            return;
        }
        let call = c.id;
        match (c.phase, kind) {
            (Phase::Incoming | Phase::Answering, Kind::Cancel) => {
                self.end(EndReason::Cancelled { local: false })
            }
            (Phase::Incoming | Phase::Answering, Kind::AnsweredElsewhere) => {
                self.end(EndReason::AnsweredElsewhere)
            }
            (Phase::Incoming | Phase::Answering, Kind::KeepAlive(_)) => c.last_heard = now,
            (Phase::Answering, Kind::Answer(media)) => {
                c.phase = Phase::Active;
                c.last_heard = now;
                c.next_send = now + self.cfg.keepalive_interval;
                self.events.push_back(CallEvent::Connected {
                    call,
                    device,
                    media,
                });
            }
            (Phase::Answering, Kind::Hangup) => self.end(EndReason::HungUp { local: false }),
            (Phase::Active, _) => self.on_active(now, kind),
            _ => self.stats.wrong_state += 1,
        }
    }

    /// A message from the peer of an active call.
    fn on_active(&mut self, now: Instant, kind: Kind) {
        let media = self.cfg.media;
        let Some(c) = self.call.as_mut() else { return };
        c.last_heard = now;
        let call = c.id;
        let peer = c.peer.expect("active calls have a peer");
        let held = match kind {
            Kind::Hold(h) | Kind::KeepAlive(h) => h,
            Kind::Hangup => {
                self.end(EndReason::HungUp { local: false });
                return;
            }
            // A retransmitted answer (our confirmation was lost): confirm again.
            Kind::Answer(_) if c.outgoing => {
                self.send(peer, Message::CallAnswer { call, media });
                return;
            }
            // A repeated confirmation.
            Kind::Answer(_) if !c.outgoing => return,
            _ => {
                self.stats.wrong_state += 1;
                return;
            }
        };
        if c.remote_hold != held {
            c.remote_hold = held;
            self.events.push_back(CallEvent::HoldChanged {
                call,
                local_hold: c.local_hold,
                remote_hold: held,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_invite(
        &mut self,
        now: Instant,
        from: DeviceId,
        user: &UserName,
        call: CallId,
        caller: DeviceId,
        nonce: u64,
        media: u8,
        timestamp: UnixTime,
    ) {
        if caller != from || from == self.device {
            self.stats.unexpected_device += 1;
            return;
        }
        let wall = self.wall(now);
        if self.too_old(timestamp, wall)
            || timestamp.0 > wall.0.saturating_add(self.cfg.max_skew.as_secs())
        {
            self.stats.stale_invites += 1;
            return;
        }
        self.forget_old(wall);
        // A remembered call id is answered from memory, whatever the floors: they stand only
        // for what was forgotten.
        if let Some(s) = self.seen.get(&call).copied() {
            let retransmit = s.from == from && s.nonce == nonce;
            let ringing_here = self
                .call
                .as_ref()
                .is_some_and(|c| c.id == call && !c.outgoing);
            if retransmit && ringing_here {
                self.stats.duplicate_invites += 1;
                if let Some(c) = self.call.as_mut() {
                    c.last_heard = now;
                    if c.phase == Phase::Incoming {
                        self.send(from, Message::CallRinging { call });
                    }
                }
            } else if retransmit && s.busy {
                self.stats.duplicate_invites += 1;
                self.send(from, Message::CallBusy { call });
            } else if let (true, Some(word)) = (retransmit, self.final_word(call, user, false)) {
                // The caller still invites a call that is over here: our last word was lost.
                self.stats.duplicate_invites += 1;
                self.send(from, word);
            } else {
                self.stats.replayed_invites += 1;
            }
            return;
        }
        if self.under_floor(from, timestamp) {
            self.stats.stale_invites += 1;
            return;
        }
        self.make_room(from);
        // The eviction may have raised a floor over this very invite: its device's, when the
        // entry evicted was its own and no older, or, as a fallback, the one for all devices.
        if self.under_floor(from, timestamp) {
            self.stats.stale_invites += 1;
            return;
        }
        self.seen.insert(
            call,
            Seen {
                from,
                nonce,
                timestamp,
                busy: false,
            },
        );

        // Glare: our unanswered call to this very user crosses theirs.
        if let Some(c) = self
            .call
            .as_ref()
            .filter(|c| c.outgoing && c.phase == Phase::Outgoing && &c.user == user)
        {
            self.stats.glare += 1;
            let dropped = c.id;
            if call < dropped {
                self.tell_callees(None, Message::CallCancel { call: dropped });
                self.call = None;
                self.events.push_back(CallEvent::GlareMerged {
                    dropped,
                    kept: call,
                });
                self.ring(now, from, user, call, media, false);
                self.answer(now, call).expect("the merged call rings here");
            }
            // Otherwise our call wins: the peer merges it; its invite is ignored.
            return;
        }
        if self.call.is_some() || self.do_not_disturb {
            self.stats.busy_rejected += 1;
            if let Some(s) = self.seen.get_mut(&call) {
                s.busy = true;
            }
            self.send(from, Message::CallBusy { call });
            self.events.push_back(CallEvent::RejectedBusy {
                call,
                user: user.clone(),
            });
            return;
        }
        self.ring(now, from, user, call, media, true);
    }

    fn ring(
        &mut self,
        now: Instant,
        from: DeviceId,
        user: &UserName,
        call: CallId,
        media: u8,
        announce: bool,
    ) {
        self.call = Some(Call {
            id: call,
            user: user.clone(),
            outgoing: false,
            phase: Phase::Incoming,
            callees: Vec::new(),
            nonce: 0,
            timestamp: self.wall(now),
            peer: Some(from),
            local_hold: false,
            remote_hold: false,
            ring_deadline: now + self.cfg.ring_timeout,
            last_heard: now,
            next_send: now + self.cfg.retransmit_interval,
        });
        self.send(from, Message::CallRinging { call });
        if announce {
            self.events.push_back(CallEvent::Incoming {
                call,
                user: user.clone(),
                device: from,
                media,
            });
        }
    }

    /// The deadline from [`CallMachine::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let media = self.cfg.media;
        let (retransmit, keepalive, peer_timeout) = (
            self.cfg.retransmit_interval,
            self.cfg.keepalive_interval,
            self.cfg.peer_timeout,
        );
        let Some(c) = self.call.as_mut() else { return };
        let call = c.id;
        match c.phase {
            Phase::Outgoing => {
                if now >= c.ring_deadline {
                    self.tell_callees(None, Message::CallCancel { call });
                    self.end(EndReason::Missed);
                } else if now >= c.next_send {
                    c.next_send = now + retransmit;
                    let invite = Message::CallInvite {
                        call,
                        caller: self.device,
                        nonce: c.nonce,
                        media,
                        timestamp: c.timestamp,
                    };
                    let sends: Vec<(DeviceId, Message<'static>)> = c
                        .callees
                        .iter()
                        .filter(|d| !d.busy)
                        .map(|d| {
                            let m = if d.ringing {
                                Message::CallKeepAlive { call, held: false }
                            } else {
                                invite.clone()
                            };
                            (d.device, m)
                        })
                        .collect();
                    for (d, m) in sends {
                        self.send(d, m);
                    }
                }
            }
            Phase::Incoming => {
                if now >= c.ring_deadline {
                    self.end(EndReason::Missed);
                } else if now >= c.last_heard + peer_timeout {
                    self.end(EndReason::PeerVanished);
                }
            }
            Phase::Answering => {
                if now >= c.last_heard + peer_timeout {
                    self.end(EndReason::PeerVanished);
                } else if now >= c.next_send {
                    c.next_send = now + retransmit;
                    let peer = c.peer.expect("answering calls have a peer");
                    self.send(peer, Message::CallAnswer { call, media });
                }
            }
            Phase::Active => {
                if now >= c.last_heard + peer_timeout {
                    self.end(EndReason::PeerVanished);
                } else if now >= c.next_send {
                    c.next_send = now + keepalive;
                    let (peer, held) = (c.peer.expect("active calls have a peer"), c.local_hold);
                    self.send(peer, Message::CallKeepAlive { call, held });
                }
            }
        }
    }

    // ---- outputs ----

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<CallTransmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    /// When to call [`CallMachine::handle_timeout`]; `None` without a call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let c = self.call.as_ref()?;
        let silence = c.last_heard + self.cfg.peer_timeout;
        Some(match c.phase {
            Phase::Outgoing => c.ring_deadline.min(c.next_send),
            Phase::Incoming => c.ring_deadline.min(silence),
            Phase::Answering | Phase::Active => c.next_send.min(silence),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ringing,
    Answer(u8),
    Decline,
    Busy,
    Cancel,
    Hangup,
    Hold(bool),
    AnsweredElsewhere,
    KeepAlive(bool),
}

#[cfg(test)]
mod tests;
