//! A client's calls as the C side sees them: ids that never repeat, the state of each call,
//! its audio, and the translation of the node's call events into C events.
//!
//! A call's C id exists from the moment the application dials (before the node has found the
//! callee and placed the call, which gives it its protocol `CallId`) or from the moment an
//! incoming call rings. Ended calls are kept (the last [`ENDED_KEPT`]) so their final
//! statistics can still be read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use natter_core::call::{CallError, CallEvent, EndReason};
use natter_core::call::{CallQuality, PathKind};
use natter_core::crypto::UserName;
use natter_core::wire::message::CallId;
use natter_media::audio::pcm::{CapturePusher, PlaybackPuller};
use natter_media::call::{CallAudio, CallAudioStats};
use natter_overlay::node::{DialError, DialOutcome, Node};
use natter_transport::runtime::RuntimeHandle;

use crate::audio;
use crate::call::{NatterCallState, NatterEndReason, NatterPathKind};
use crate::events::{Event, NatterEventKind};
use crate::options::AudioSettings;
use crate::result::NatterResult;

/// Ended calls kept for their statistics.
pub(crate) const ENDED_KEPT: usize = 16;

/// One call.
pub(crate) struct CallEntry {
    /// The C id.
    pub handle: u64,
    /// The protocol call id, once known.
    pub id: Option<CallId>,
    /// The other side.
    pub user: String,
    pub state: NatterCallState,
    /// The application hung up before the dial placed the call.
    pub cancelled: bool,
    pub local_hold: bool,
    pub remote_hold: bool,
    pub muted: Arc<AtomicBool>,
    pub audio: Option<CallAudio>,
    pub pcm: Option<(CapturePusher, PlaybackPuller)>,
    pub quality: Option<CallQuality>,
    pub path: Option<PathKind>,
    pub final_audio: Option<CallAudioStats>,
    pub connected_at: Option<Instant>,
    pub ended_at: Option<Instant>,
    pub end_reason: Option<NatterEndReason>,
}

impl CallEntry {
    fn new(handle: u64, user: String, state: NatterCallState) -> Self {
        Self {
            handle,
            id: None,
            user,
            state,
            cancelled: false,
            local_hold: false,
            remote_hold: false,
            muted: Arc::new(AtomicBool::new(false)),
            audio: None,
            pcm: None,
            quality: None,
            path: None,
            final_audio: None,
            connected_at: None,
            ended_at: None,
            end_reason: None,
        }
    }

    /// True until the call ended.
    pub fn is_live(&self) -> bool {
        self.state != NatterCallState::NatterCallEnded
    }

    /// End the call: stop its audio (keeping the final figures) and say so.
    pub fn end(&mut self, reason: NatterEndReason, detail: &str) -> Event {
        self.state = NatterCallState::NatterCallEnded;
        self.end_reason = Some(reason);
        self.ended_at = Some(Instant::now());
        self.pcm = None;
        if let Some(a) = self.audio.take() {
            self.final_audio = Some(a.stop());
        }
        Event::new(NatterEventKind::NatterEventCallEnded)
            .call(self.handle)
            .user(self.user.clone())
            .code(reason as u32)
            .detail(detail)
    }

    /// What the audio did so far (or in total, once ended).
    pub fn audio_stats(&self) -> Option<CallAudioStats> {
        self.audio.as_ref().map(|a| a.stats()).or(self.final_audio)
    }
}

/// A command the node must run once the table's lock is released.
pub(crate) enum FollowUp {
    /// Hang up a call the application had already given up.
    HangUp(CallId),
}

/// A client's calls.
#[derive(Default)]
pub(crate) struct CallTable {
    next: u64,
    calls: Vec<CallEntry>,
    /// Calls placed for dials the application cancelled: their events are not reported.
    ignored: Vec<CallId>,
}

impl CallTable {
    /// The live call, if any.
    pub fn live(&self) -> Option<&CallEntry> {
        self.calls.iter().find(|c| c.is_live())
    }

    /// The call with C id `handle`.
    pub fn get(&mut self, handle: u64) -> Option<&mut CallEntry> {
        self.calls.iter_mut().find(|c| c.handle == handle)
    }

    fn by_id(&mut self, id: CallId) -> Option<&mut CallEntry> {
        self.calls
            .iter_mut()
            .find(|c| c.id == Some(id) && c.is_live())
    }

    fn add(&mut self, user: String, state: NatterCallState) -> &mut CallEntry {
        self.next += 1;
        let handle = self.next;
        // Forget the oldest ended calls beyond what is kept.
        let ended = self.calls.iter().filter(|c| !c.is_live()).count();
        if ended >= ENDED_KEPT {
            if let Some(i) = self.calls.iter().position(|c| !c.is_live()) {
                self.calls.remove(i);
            }
        }
        self.calls.push(CallEntry::new(handle, user, state));
        self.calls.last_mut().expect("just pushed")
    }

    /// A new outgoing call to `user`.
    pub fn add_outgoing(&mut self, user: &UserName) -> u64 {
        self.add(
            user.as_str().to_string(),
            NatterCallState::NatterCallDialing,
        )
        .handle
    }

    /// Remove a call that never started (the node was gone).
    pub fn forget(&mut self, handle: u64) {
        self.calls.retain(|c| c.handle != handle);
    }

    /// The application hangs up call `handle` before it was placed: it ends now, and the call
    /// the dial may still place is hung up as soon as it is.
    pub fn cancel_dial(&mut self, handle: u64) -> Option<Event> {
        let c = self.get(handle)?;
        c.cancelled = true;
        Some(c.end(NatterEndReason::NatterEndCancelledLocal, "cancelled"))
    }

    /// End every live call (the client stops); returns the events and the calls to hang up.
    pub fn end_all(&mut self, reason: NatterEndReason) -> (Vec<Event>, Vec<CallId>) {
        let mut events = Vec::new();
        let mut hang_up = Vec::new();
        for c in self.calls.iter_mut().filter(|c| c.is_live()) {
            hang_up.extend(c.id);
            events.push(c.end(reason, "the client stopped"));
        }
        (events, hang_up)
    }

    /// The outcome of the dial of call `handle` (`None`: a dial nobody knows).
    pub fn on_dial(
        &mut self,
        handle: Option<u64>,
        outcome: DialOutcome,
        events: &mut Vec<Event>,
        follow: &mut Vec<FollowUp>,
    ) {
        let entry = handle.and_then(|h| self.calls.iter_mut().find(|c| c.handle == h));
        match (entry, outcome) {
            (Some(c), DialOutcome::Calling(id)) if !c.cancelled => c.id = Some(id),
            (_, DialOutcome::Calling(id)) => {
                self.ignored.push(id);
                follow.push(FollowUp::HangUp(id));
            }
            (Some(c), DialOutcome::Failed(e)) if c.is_live() => {
                let reason = match e {
                    DialError::NotFound => NatterEndReason::NatterEndUserNotFound,
                    DialError::Offline => NatterEndReason::NatterEndUserOffline,
                    DialError::Unavailable => NatterEndReason::NatterEndSearchUnavailable,
                    _ => NatterEndReason::NatterEndRefused,
                };
                events.push(c.end(reason, &e.to_string()));
            }
            (_, DialOutcome::Failed(_)) => {}
        }
    }

    /// A call signalling event. `rt` and `settings` start a connected call's media.
    pub fn on_call_event(
        &mut self,
        ev: CallEvent,
        rt: &RuntimeHandle<Node>,
        settings: &AudioSettings,
        events: &mut Vec<Event>,
    ) {
        let id = match &ev {
            CallEvent::Incoming { call, .. }
            | CallEvent::Ringing { call, .. }
            | CallEvent::Connected { call, .. }
            | CallEvent::HoldChanged { call, .. }
            | CallEvent::RejectedBusy { call, .. }
            | CallEvent::Ended { call, .. } => *call,
            CallEvent::GlareMerged { dropped, .. } => *dropped,
        };
        if self.ignored.contains(&id) {
            if matches!(ev, CallEvent::Ended { .. }) {
                self.ignored.retain(|c| *c != id);
            }
            return;
        }
        match ev {
            CallEvent::Incoming { call, user, .. } => {
                let c = self.add(
                    user.as_str().to_string(),
                    NatterCallState::NatterCallIncoming,
                );
                c.id = Some(call);
                events.push(
                    Event::new(NatterEventKind::NatterEventCallIncoming)
                        .call(c.handle)
                        .user(user.as_str())
                        .detail(format!("{user} is calling")),
                );
            }
            CallEvent::Ringing { call, device } => {
                if let Some(c) = self.by_id(call) {
                    c.state = NatterCallState::NatterCallRinging;
                    events.push(
                        Event::new(NatterEventKind::NatterEventCallRinging)
                            .call(c.handle)
                            .user(c.user.clone())
                            .detail(format!("ringing on device {device}")),
                    );
                }
            }
            CallEvent::Connected { call, device, .. } => {
                if let Some(c) = self.by_id(call) {
                    c.state = NatterCallState::NatterCallActive;
                    c.connected_at = Some(Instant::now());
                    let started = audio::start(settings, rt.clone(), call, c.muted.clone());
                    events.push(
                        Event::new(NatterEventKind::NatterEventCallConnected)
                            .call(c.handle)
                            .user(c.user.clone())
                            .detail(format!("connected to device {device}")),
                    );
                    if let Some(why) = started.error {
                        events.push(
                            Event::new(NatterEventKind::NatterEventAudioError)
                                .call(c.handle)
                                .detail(why),
                        );
                    }
                    c.audio = started.audio;
                    c.pcm = started.pcm;
                    if let Some(a) = &c.audio {
                        a.set_paused(c.local_hold || c.remote_hold);
                    }
                }
            }
            CallEvent::HoldChanged {
                call,
                local_hold,
                remote_hold,
            } => {
                if let Some(c) = self.by_id(call) {
                    c.local_hold = local_hold;
                    c.remote_hold = remote_hold;
                    if let Some(a) = &c.audio {
                        a.set_paused(local_hold || remote_hold);
                    }
                    let mut e = Event::new(NatterEventKind::NatterEventCallHoldChanged)
                        .call(c.handle)
                        .detail(format!("hold: local {local_hold}, remote {remote_hold}"));
                    e.local_hold = local_hold;
                    e.remote_hold = remote_hold;
                    events.push(e);
                }
            }
            CallEvent::GlareMerged { dropped, kept } => {
                // Both sides called each other at once: the application's call continues as
                // the one that survived (answered automatically), under the same C id.
                if let Some(c) = self.by_id(dropped) {
                    c.id = Some(kept);
                    c.state = NatterCallState::NatterCallAnswering;
                }
            }
            CallEvent::RejectedBusy { user, .. } => events.push(
                Event::new(NatterEventKind::NatterEventCallRejectedBusy)
                    .user(user.as_str())
                    .detail(format!("{user} called while this device was busy")),
            ),
            CallEvent::Ended { call, reason } => {
                if let Some(c) = self.by_id(call) {
                    let r = end_reason(reason);
                    events.push(c.end(r, &format!("{reason:?}")));
                }
            }
        }
    }

    /// The connected call's path changed.
    pub fn on_path(&mut self, call: CallId, kind: PathKind, detail: String) -> Option<Event> {
        let c = self.by_id(call)?;
        c.path = Some(kind);
        Some(
            Event::new(NatterEventKind::NatterEventCallPathChanged)
                .call(c.handle)
                .code(path_kind(Some(kind)) as u32)
                .detail(detail),
        )
    }

    /// Fresh quality figures of the connected call.
    pub fn on_quality(&mut self, call: CallId, quality: CallQuality) -> Option<Event> {
        let c = self.by_id(call)?;
        if let Some(a) = &c.audio {
            a.on_report(quality.loss_out, quality.jitter_ms, quality.rtt);
        }
        c.path = quality.kind.or(c.path);
        c.quality = Some(quality);
        Some(Event::new(NatterEventKind::NatterEventCallStats).call(c.handle))
    }

    /// A media frame of the connected call.
    pub fn on_media(&mut self, call: CallId, data: &[u8]) {
        if let Some(a) = self.by_id(call).and_then(|c| c.audio.as_ref()) {
            a.receive(data);
        }
    }

    /// The call id of live call `handle` for a command, or why there is none. `Ok(None)`
    /// means the call is still being dialled (no protocol id yet).
    pub fn command_target(&mut self, handle: u64) -> Result<Option<CallId>, NatterResult> {
        let c = self.get(handle).ok_or(NatterResult::NatterUnknownCall)?;
        if !c.is_live() {
            return Err(NatterResult::NatterWrongCallState);
        }
        Ok(c.id)
    }

    /// Whether `muted` flags of live calls can be set.
    pub fn set_muted(&mut self, handle: u64, muted: bool) -> Result<(), NatterResult> {
        let c = self.get(handle).ok_or(NatterResult::NatterUnknownCall)?;
        if !c.is_live() {
            return Err(NatterResult::NatterWrongCallState);
        }
        c.muted.store(muted, Ordering::SeqCst);
        Ok(())
    }
}

/// The C form of why a call ended.
pub(crate) fn end_reason(r: EndReason) -> NatterEndReason {
    match r {
        EndReason::HungUp { local: true } => NatterEndReason::NatterEndHungUpLocal,
        EndReason::HungUp { local: false } => NatterEndReason::NatterEndHungUpRemote,
        EndReason::Declined { local: true } => NatterEndReason::NatterEndDeclinedLocal,
        EndReason::Declined { local: false } => NatterEndReason::NatterEndDeclinedRemote,
        EndReason::Busy => NatterEndReason::NatterEndBusy,
        EndReason::Cancelled { local: true } => NatterEndReason::NatterEndCancelledLocal,
        EndReason::Cancelled { local: false } => NatterEndReason::NatterEndCancelledRemote,
        EndReason::Missed => NatterEndReason::NatterEndMissed,
        EndReason::PeerVanished => NatterEndReason::NatterEndPeerVanished,
        EndReason::AnsweredElsewhere => NatterEndReason::NatterEndAnsweredElsewhere,
    }
}

/// The C form of a path kind.
pub(crate) fn path_kind(k: Option<PathKind>) -> NatterPathKind {
    match k {
        None => NatterPathKind::NatterPathNone,
        Some(PathKind::DirectLan) => NatterPathKind::NatterPathDirectLan,
        Some(PathKind::Direct) => NatterPathKind::NatterPathDirect,
        Some(PathKind::RelayUdp) => NatterPathKind::NatterPathRelayUdp,
        Some(PathKind::RelayTcp) => NatterPathKind::NatterPathRelayTcp,
    }
}

/// The C result of a refused call command.
pub(crate) fn call_error(e: CallError) -> NatterResult {
    match e {
        CallError::InCall => NatterResult::NatterInCall,
        _ => NatterResult::NatterWrongCallState,
    }
}
