//! Calls: the [`Call`] handle, and the table of a client's calls that turns the node's call
//! events into [`Event`]s and runs each connected call's audio.
//!
//! A call's [`CallId`] exists from the moment the application dials (before the node has
//! found the callee and placed the call, which gives it its protocol id) or from the moment
//! an incoming call rings. Ended calls are kept (the last [`ENDED_KEPT`]) so their final
//! statistics can still be read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use natter_core::call::{CallError as Refused, CallEvent, CallQuality, PathKind};
use natter_core::crypto::UserName;
use natter_core::wire::message::CallId as WireId;
use natter_media::audio::processing::VoiceProcessing;
use natter_media::call::{CallAudio, CallAudioStats, PeerReport};
use natter_overlay::node::{DialError, DialOutcome, Node};
use natter_transport::runtime::RuntimeHandle;

use crate::audio::{self, AppPcm, Audio, AudioConfig};
use crate::client::{lock, Shared};
use crate::error::{CallError, PcmError};
use crate::events::Event;
use crate::types::{AudioStats, CallId, CallState, CallStats, EndReason, Refusal};

/// Ended calls kept for their statistics.
pub(crate) const ENDED_KEPT: usize = 16;

/// A call: answer, decline, hang up, hold, mute, read its statistics, and (with
/// [`Audio::app`]) push and pull its audio.
///
/// A handle: cheap to clone, usable from any thread; every clone names the same call. It
/// stays usable after the call ended (its final [`Call::stats`]) until the client forgets it
/// (it keeps the last 16 ended calls) or is dropped; it does not keep the client alive.
///
/// ```
/// # let net = natter_fixtures::TestNet::start();
/// # let alice = net.client("alice");
/// # let bob = net.client("bob");
/// use std::time::Duration;
/// use natter::{Audio, Event};
///
/// let call = alice.call("bob", Audio::tone())?;
/// // bob answers when it rings.
/// while let Ok(event) = bob.events().recv_timeout(Duration::from_secs(10)) {
///     if let Event::IncomingCall { call, from, .. } = event {
///         assert_eq!(from.as_str(), "alice");
///         call.answer(Audio::silent())?;
///         break;
///     }
/// }
/// while let Ok(event) = alice.events().recv_timeout(Duration::from_secs(10)) {
///     if let Event::CallConnected { .. } = event {
///         break;
///     }
/// }
/// println!("{}", call.stats()?); // "connected, path direct-lan, ..."
/// call.hang_up()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Call {
    pub(crate) shared: Weak<Shared>,
    pub(crate) id: CallId,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Call").field(&self.id.0).finish()
    }
}

impl PartialEq for Call {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && Weak::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Call {}

/// The device name a call's audio uses for its microphone (`input`) or speaker, when it uses
/// a device.
fn device_choice(audio: &mut Audio, input: bool) -> Option<&mut Option<String>> {
    match (input, audio) {
        (
            true,
            Audio {
                input: crate::AudioInput::Device(d),
                ..
            },
        )
        | (
            false,
            Audio {
                output: crate::AudioOutput::Device(d),
                ..
            },
        ) => Some(d),
        _ => None,
    }
}

/// A command on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Answer,
    Decline,
    HangUp,
    Hold,
    Resume,
}

fn refused(e: Refused) -> CallError {
    match e {
        Refused::InCall => CallError::InCall,
        Refused::UnknownCall => CallError::UnknownCall,
        _ => CallError::WrongState,
    }
}

impl Call {
    /// The call's id (events name calls by it).
    pub fn id(&self) -> CallId {
        self.id
    }

    /// The client's shared state, while the client lives.
    fn shared(&self) -> Option<Arc<Shared>> {
        self.shared.upgrade()
    }

    /// The other side.
    pub fn peer(&self) -> Option<UserName> {
        let shared = self.shared()?;
        let peer = lock(&shared.calls).get(self.id).map(|c| c.peer.clone());
        peer
    }

    /// Answer this incoming call with `audio`. [`Event::CallConnected`] follows once the
    /// caller confirms.
    ///
    /// # Errors
    /// [`CallError::WrongState`] when it is not ringing here, [`CallError::UnknownCall`],
    /// [`CallError::NotStarted`].
    pub fn answer(&self, audio: Audio) -> Result<(), CallError> {
        self.command(Op::Answer, Some(audio))
    }

    /// Decline this incoming call, for every device of this user (the caller hears
    /// [`EndReason::Declined`]).
    ///
    /// # Errors
    /// As [`Call::answer`].
    pub fn decline(&self) -> Result<(), CallError> {
        self.command(Op::Decline, None)
    }

    /// Hang up: a connected call ends for both sides; an outgoing call not answered yet is
    /// cancelled (even while still dialling). [`Event::CallEnded`] follows.
    ///
    /// # Errors
    /// [`CallError::WrongState`] when the call already ended, [`CallError::UnknownCall`],
    /// [`CallError::NotStarted`].
    pub fn hang_up(&self) -> Result<(), CallError> {
        self.command(Op::HangUp, None)
    }

    /// Put the connected call on hold: no audio flows either way until [`Call::resume`] (the
    /// path stays checked, about 3 small packets a second). [`Event::CallHoldChanged`]
    /// follows.
    ///
    /// # Errors
    /// [`CallError::WrongState`] when the call is not connected, [`CallError::UnknownCall`],
    /// [`CallError::NotStarted`].
    pub fn hold(&self) -> Result<(), CallError> {
        self.command(Op::Hold, None)
    }

    /// Take the call off this side's hold (the other side's stays until it resumes).
    ///
    /// # Errors
    /// As [`Call::hold`].
    pub fn resume(&self) -> Result<(), CallError> {
        self.command(Op::Resume, None)
    }

    /// Mute or unmute: while muted, captured audio is replaced by silence before encoding
    /// (the other side hears silence; the call and its statistics go on). Local only: the
    /// other side is not told. May be set before the call connects.
    ///
    /// # Errors
    /// [`CallError::WrongState`] when the call ended, [`CallError::UnknownCall`].
    pub fn set_muted(&self, muted: bool) -> Result<(), CallError> {
        let shared = self.shared().ok_or(CallError::UnknownCall)?;
        let mut t = lock(&shared.calls);
        let c = t.get_mut(self.id).ok_or(CallError::UnknownCall)?;
        if !c.is_live() {
            return Err(CallError::WrongState);
        }
        c.muted.store(muted, Ordering::SeqCst);
        Ok(())
    }

    /// Choose the voice processing of this call's captured audio: echo cancellation, noise
    /// suppression, gain control; `None`: back to the client's choice
    /// ([`AudioConfig::voice_processing`](crate::AudioConfig::voice_processing), whose
    /// default depends on the call's [`Audio`]). At once while the call is connected (the
    /// echo canceller then takes about a second to learn the room again), else from when it
    /// connects. [`AudioStats::voice_processing`](crate::AudioStats::voice_processing) tells
    /// what runs.
    ///
    /// # Errors
    /// [`CallError::WrongState`] when the call ended, [`CallError::UnknownCall`].
    pub fn set_voice_processing(
        &self,
        processing: Option<VoiceProcessing>,
    ) -> Result<(), CallError> {
        let shared = self.shared().ok_or(CallError::UnknownCall)?;
        let mut t = lock(&shared.calls);
        let c = t.get_mut(self.id).ok_or(CallError::UnknownCall)?;
        if !c.is_live() {
            return Err(CallError::WrongState);
        }
        c.processing = processing;
        if let Some(a) = &c.media {
            a.set_processing(audio::voice_processing(
                &shared.settings.audio,
                processing,
                c.auto_processing,
            ));
        }
        Ok(())
    }

    /// Switch the call's microphone to the device `name` (an [`AudioDevice`](crate::AudioDevice)'s
    /// id or name; `None`: the configured or the system's default one), at once while it is
    /// connected (the old device is closed once the new one is open), else for when it
    /// connects (for an incoming call, the [`Audio`] given to [`Call::answer`] replaces the
    /// choice). Blocks while the device opens (typically milliseconds, at most 3 s); the
    /// call's audio goes on meanwhile.
    ///
    /// # Errors
    /// [`CallError::NotDeviceAudio`] when the call's audio does not come from a device,
    /// [`CallError::Device`] when the device cannot be opened (the call keeps the one it
    /// had), [`CallError::WrongState`] when the call ended, [`CallError::UnknownCall`].
    pub fn set_microphone(&self, name: Option<&str>) -> Result<(), CallError> {
        self.set_device(true, name)
    }

    /// Switch the call's speaker: as [`Call::set_microphone`].
    ///
    /// # Errors
    /// As [`Call::set_microphone`].
    pub fn set_speaker(&self, name: Option<&str>) -> Result<(), CallError> {
        self.set_device(false, name)
    }

    fn set_device(&self, input: bool, name: Option<&str>) -> Result<(), CallError> {
        let shared = self.shared().ok_or(CallError::UnknownCall)?;
        // Checked first, then the device is opened without holding the call table (the
        // node's thread takes it for every media frame).
        let muted = {
            let mut t = lock(&shared.calls);
            let c = t.get_mut(self.id).ok_or(CallError::UnknownCall)?;
            if !c.is_live() {
                return Err(CallError::WrongState);
            }
            device_choice(&mut c.audio, input).ok_or(CallError::NotDeviceAudio)?;
            c.muted.clone()
        };
        let (task, swapped) = audio::prepare_switch(input, name, &shared.settings.audio, muted)
            .map_err(CallError::Device)?;
        {
            let mut t = lock(&shared.calls);
            let c = t.get_mut(self.id).ok_or(CallError::UnknownCall)?;
            if !c.is_live() {
                return Err(CallError::WrongState);
            }
            // Answered meanwhile with audio that uses no device: nothing to switch.
            let choice = device_choice(&mut c.audio, input).ok_or(CallError::NotDeviceAudio)?;
            *choice = name.map(str::to_string);
            match &c.media {
                Some(media) => media.on_media_thread(task),
                // Not connected yet: the media starts with the new choice (the device just
                // opened only proved it can be).
                None => return Ok(()),
            }
        }
        match swapped.wait(Duration::from_secs(2)) {
            audio::Swap::Done => Ok(()),
            // The media stopped (the call ended) before its next frame.
            audio::Swap::MediaStopped => Err(CallError::WrongState),
            // The task will not swap any more: the call keeps its device.
            audio::Swap::Abandoned => Err(CallError::Device(
                "the call's media did not take the device within 2 s".into(),
            )),
        }
    }

    /// The call's state and statistics: live while it runs, final once it ended.
    ///
    /// # Errors
    /// [`CallError::UnknownCall`] once the client forgot it.
    pub fn stats(&self) -> Result<CallStats, CallError> {
        let shared = self.shared().ok_or(CallError::UnknownCall)?;
        let stats = lock(&shared.calls).get(self.id).map(CallEntry::stats);
        stats.ok_or(CallError::UnknownCall)
    }

    /// Queue captured samples (mono, signed 16-bit, at [`SAMPLE_RATE`](crate::SAMPLE_RATE))
    /// for sending, with [`AudioInput::App`](crate::AudioInput::App). Call it from the
    /// application's capture callback or loop, in real time; it never blocks beyond a copy.
    /// The queue holds 400 ms: beyond that the oldest samples are dropped. While the call is
    /// muted or held the samples are consumed and not sent.
    ///
    /// # Errors
    /// [`PcmError::NoAppAudio`] when the call is not connected (yet, or any more) or does not
    /// take the application's audio; [`PcmError::UnknownCall`].
    pub fn push_pcm(&self, samples: &[i16]) -> Result<(), PcmError> {
        let shared = self.shared().ok_or(PcmError::UnknownCall)?;
        let push = {
            let t = lock(&shared.calls);
            let c = t.get(self.id).ok_or(PcmError::UnknownCall)?;
            c.pcm.push.clone().ok_or(PcmError::NoAppAudio)?
        };
        push.push(samples);
        Ok(())
    }

    /// Take samples to play into `out` (mono, signed 16-bit, at
    /// [`SAMPLE_RATE`](crate::SAMPLE_RATE)), with [`AudioOutput::App`](crate::AudioOutput::App);
    /// where fewer were received the rest of `out` is silence. Returns the number of real
    /// samples written before the silence. Call it from the application's playback callback
    /// or loop, in real time; it never blocks beyond a copy.
    ///
    /// # Errors
    /// As [`Call::push_pcm`] (`out` is then untouched).
    pub fn pull_pcm(&self, out: &mut [i16]) -> Result<usize, PcmError> {
        let shared = self.shared().ok_or(PcmError::UnknownCall)?;
        let pull = {
            let t = lock(&shared.calls);
            let c = t.get(self.id).ok_or(PcmError::UnknownCall)?;
            c.pcm.pull.clone().ok_or(PcmError::NoAppAudio)?
        };
        Ok(pull.pull(out))
    }

    fn command(&self, op: Op, audio: Option<Audio>) -> Result<(), CallError> {
        let shared = self.shared().ok_or(CallError::NotStarted)?;
        let rt = shared.runtime().ok_or(CallError::NotStarted)?;
        let target = {
            let mut t = lock(&shared.calls);
            let c = t.get_mut(self.id).ok_or(CallError::UnknownCall)?;
            if !c.is_live() {
                return Err(CallError::WrongState);
            }
            if op == Op::Answer {
                if c.state != CallState::Incoming {
                    return Err(CallError::WrongState);
                }
                if let Some(a) = audio {
                    c.audio = a;
                }
            }
            c.wire
        };
        let Some(wire) = target else {
            // Still dialling: only hanging up makes sense, and ends the call at once.
            if op != Op::HangUp {
                return Err(CallError::WrongState);
            }
            let e = lock(&shared.calls).cancel_dial(self.id);
            if let Some(e) = e {
                shared.events.push(e);
            }
            return Ok(());
        };
        rt.command(move |n, now| match op {
            Op::Answer => n.answer(now, wire),
            Op::Decline => n.decline(now, wire),
            Op::HangUp => n.hang_up(now, wire),
            Op::Hold => n.hold(now, wire),
            Op::Resume => n.resume(now, wire),
        })
        .ok_or(CallError::NotStarted)?
        .map_err(refused)
    }
}

/// One call, as the table keeps it.
pub(crate) struct CallEntry {
    pub id: CallId,
    /// The protocol call id, once known.
    pub wire: Option<WireId>,
    pub peer: UserName,
    pub state: CallState,
    /// The application hung up before the dial placed the call.
    cancelled: bool,
    local_hold: bool,
    remote_hold: bool,
    muted: Arc<AtomicBool>,
    /// Voice processing the application chose for this call ([`Call::set_voice_processing`]);
    /// `None`: what the client's [`AudioConfig`](crate::AudioConfig) says for its audio.
    processing: Option<VoiceProcessing>,
    /// What the call's audio needs by default, once its media started.
    auto_processing: VoiceProcessing,
    audio: Audio,
    media: Option<CallAudio>,
    pcm: AppPcm,
    quality: Option<CallQuality>,
    path: Option<PathKind>,
    final_audio: Option<CallAudioStats>,
    /// When it was dialled or rang here.
    started: Instant,
    connected_at: Option<Instant>,
    ended_at: Option<Instant>,
    end_reason: Option<EndReason>,
    frames_in: u64,
    last_media: Option<Instant>,
}

impl CallEntry {
    fn new(id: CallId, peer: UserName, state: CallState, audio: Audio) -> Self {
        Self {
            id,
            wire: None,
            peer,
            state,
            cancelled: false,
            local_hold: false,
            remote_hold: false,
            muted: Arc::new(AtomicBool::new(false)),
            processing: None,
            auto_processing: VoiceProcessing::OFF,
            audio,
            media: None,
            pcm: AppPcm::default(),
            quality: None,
            path: None,
            final_audio: None,
            started: Instant::now(),
            connected_at: None,
            ended_at: None,
            end_reason: None,
            frames_in: 0,
            last_media: None,
        }
    }

    /// True until the call ended.
    pub fn is_live(&self) -> bool {
        self.state != CallState::Ended
    }

    /// End the call: stop its audio (keeping the final figures) and say so.
    fn end(&mut self, reason: EndReason) -> Event {
        self.state = CallState::Ended;
        self.end_reason = Some(reason);
        self.ended_at = Some(Instant::now());
        self.pcm = AppPcm::default();
        if let Some(a) = self.media.take() {
            self.final_audio = Some(a.stop());
        }
        Event::CallEnded {
            call: self.id,
            reason,
        }
    }

    fn audio_stats(&self) -> Option<CallAudioStats> {
        self.media.as_ref().map(|a| a.stats()).or(self.final_audio)
    }

    fn stats(&self) -> CallStats {
        let q = self.quality.unwrap_or_default();
        let duration = self.connected_at.map_or(Duration::ZERO, |t0| {
            self.ended_at
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(t0)
        });
        let audio = self.audio_stats().map(|a| {
            let rq = a.receiver.quality;
            AudioStats {
                frames_sent: a.sender.sent,
                frames_received: a.receiver.jitter.received,
                bytes_sent: a.sender.bytes,
                jitter_buffer_ms: rq.jitter_buffer_ms,
                loss_before_recovery: rq.loss_before_recovery,
                loss_after_recovery: rq.loss_after_recovery,
                concealed_ms: rq.concealed_ms,
                bitrate_kbps: rq.bitrate_bps / 1000.0,
                mos: (a.receiver.jitter.received > 0).then_some(rq.mos),
                voice_processing: a.processing,
                echo_erle_db: a.echo.erle_db,
            }
        });
        CallStats {
            state: self.state,
            end_reason: self.end_reason,
            muted: self.muted.load(Ordering::Relaxed),
            local_hold: self.local_hold,
            remote_hold: self.remote_hold,
            path: self.path,
            duration,
            rtt: q.rtt,
            loss_in: q.loss_in,
            loss_out: q.loss_out,
            jitter_ms: q.jitter_ms,
            frames_in: self.frames_in.max(q.frames_in),
            audio,
        }
    }
}

/// A command the node must run once the table's lock is released.
pub(crate) enum FollowUp {
    /// Hang up a call the application had already given up.
    HangUp(WireId),
}

/// A client's calls.
#[derive(Default)]
pub(crate) struct CallTable {
    next: u64,
    calls: Vec<CallEntry>,
    /// Calls placed for dials the application cancelled: their events are not reported.
    ignored: Vec<WireId>,
}

impl CallTable {
    /// The live call, if any.
    pub fn live(&self) -> Option<&CallEntry> {
        self.calls.iter().find(|c| c.is_live())
    }

    pub fn get(&self, id: CallId) -> Option<&CallEntry> {
        self.calls.iter().find(|c| c.id == id)
    }

    fn get_mut(&mut self, id: CallId) -> Option<&mut CallEntry> {
        self.calls.iter_mut().find(|c| c.id == id)
    }

    fn by_wire(&mut self, wire: WireId) -> Option<&mut CallEntry> {
        self.calls
            .iter_mut()
            .find(|c| c.wire == Some(wire) && c.is_live())
    }

    fn add(&mut self, peer: UserName, state: CallState, audio: Audio) -> &mut CallEntry {
        self.next += 1;
        let id = CallId(self.next);
        // Forget the oldest ended calls beyond what is kept.
        let ended = self.calls.iter().filter(|c| !c.is_live()).count();
        if ended >= ENDED_KEPT {
            if let Some(i) = self.calls.iter().position(|c| !c.is_live()) {
                self.calls.remove(i);
            }
        }
        self.calls.push(CallEntry::new(id, peer, state, audio));
        self.calls.last_mut().expect("just pushed")
    }

    /// A new outgoing call to `user`.
    pub fn add_outgoing(&mut self, user: UserName, audio: Audio) -> CallId {
        self.add(user, CallState::Dialing, audio).id
    }

    /// Remove a call that never started (the node was gone).
    pub fn forget(&mut self, id: CallId) {
        self.calls.retain(|c| c.id != id);
    }

    /// The application hangs up call `id` before it was placed: it ends now, and the call
    /// the dial may still place is hung up as soon as it is.
    fn cancel_dial(&mut self, id: CallId) -> Option<Event> {
        let c = self.get_mut(id)?;
        c.cancelled = true;
        Some(c.end(EndReason::Cancelled { local: true }))
    }

    /// End every live call (the client stops); returns the events and the calls to hang up.
    pub fn end_all(&mut self) -> (Vec<Event>, Vec<WireId>) {
        let mut events = Vec::new();
        let mut hang_up = Vec::new();
        for c in self.calls.iter_mut().filter(|c| c.is_live()) {
            hang_up.extend(c.wire);
            events.push(c.end(EndReason::Stopped));
        }
        (events, hang_up)
    }

    /// The outcome of the dial of call `id` (`None`: a dial nobody knows).
    pub fn on_dial(
        &mut self,
        id: Option<CallId>,
        outcome: DialOutcome,
        events: &mut Vec<Event>,
        follow: &mut Vec<FollowUp>,
    ) {
        let entry = id.and_then(|id| self.calls.iter_mut().find(|c| c.id == id));
        match (entry, outcome) {
            (Some(c), DialOutcome::Calling(wire)) if !c.cancelled => {
                c.wire = Some(wire);
                events.push(Event::CallPlaced { call: c.id });
            }
            (_, DialOutcome::Calling(wire)) => {
                self.ignored.push(wire);
                follow.push(FollowUp::HangUp(wire));
            }
            (Some(c), DialOutcome::Failed(e)) if c.is_live() => {
                let reason = match e {
                    DialError::NotFound => EndReason::UserNotFound,
                    DialError::Offline => EndReason::UserOffline,
                    DialError::Unavailable => EndReason::SearchUnavailable,
                    DialError::Call(Refused::InCall) => EndReason::Refused(Refusal::InCall),
                    DialError::Call(Refused::NoDevices) => EndReason::Refused(Refusal::NoDevices),
                    DialError::Call(Refused::TooManyDevices) => {
                        EndReason::Refused(Refusal::TooManyDevices)
                    }
                    _ => EndReason::Refused(Refusal::Other),
                };
                events.push(c.end(reason));
            }
            (_, DialOutcome::Failed(_)) => {}
        }
    }

    /// A call signalling event. `rt` and `audio` start a connected call's media.
    pub fn on_call_event(
        &mut self,
        ev: CallEvent,
        shared: &Arc<Shared>,
        rt: &RuntimeHandle<Node>,
        audio_cfg: &AudioConfig,
        events: &mut Vec<Event>,
    ) {
        let wire = match &ev {
            CallEvent::Incoming { call, .. }
            | CallEvent::Ringing { call, .. }
            | CallEvent::Connected { call, .. }
            | CallEvent::HoldChanged { call, .. }
            | CallEvent::RejectedBusy { call, .. }
            | CallEvent::Ended { call, .. } => *call,
            CallEvent::GlareMerged { dropped, .. } => *dropped,
        };
        if self.ignored.contains(&wire) {
            if matches!(ev, CallEvent::Ended { .. }) {
                self.ignored.retain(|c| *c != wire);
            }
            return;
        }
        match ev {
            CallEvent::Incoming {
                call, user, device, ..
            } => {
                let c = self.add(user.clone(), CallState::Incoming, Audio::default());
                c.wire = Some(call);
                events.push(Event::IncomingCall {
                    call: Call {
                        shared: Arc::downgrade(shared),
                        id: c.id,
                    },
                    from: user,
                    device,
                });
            }
            CallEvent::Ringing { call, device } => {
                if let Some(c) = self.by_wire(call) {
                    c.state = CallState::Ringing;
                    events.push(Event::Ringing { call: c.id, device });
                }
            }
            CallEvent::Connected { call, device, .. } => {
                if let Some(c) = self.by_wire(call) {
                    c.state = CallState::Active;
                    let now = Instant::now();
                    c.connected_at = Some(now);
                    events.push(Event::CallConnected {
                        call: c.id,
                        device,
                        setup: now - c.started,
                    });
                    let rt = rt.clone();
                    let send = Box::new(move |frame: &[u8]| {
                        let frame = frame.to_vec();
                        rt.command(move |n, now| n.send_media(now, call, &frame).is_ok())
                            .unwrap_or(false)
                    });
                    let started =
                        audio::start(&c.audio, audio_cfg, c.processing, send, c.muted.clone());
                    for error in started.errors {
                        events.push(Event::AudioError { call: c.id, error });
                    }
                    c.media = started.media;
                    c.pcm = started.pcm;
                    c.auto_processing = started.auto;
                    if let Some(a) = &c.media {
                        a.set_paused(c.local_hold || c.remote_hold);
                    }
                }
            }
            CallEvent::HoldChanged {
                call,
                local_hold,
                remote_hold,
            } => {
                if let Some(c) = self.by_wire(call) {
                    c.local_hold = local_hold;
                    c.remote_hold = remote_hold;
                    c.last_media = None;
                    if let Some(a) = &c.media {
                        a.set_paused(local_hold || remote_hold);
                    }
                    events.push(Event::CallHoldChanged {
                        call: c.id,
                        local: local_hold,
                        remote: remote_hold,
                    });
                }
            }
            CallEvent::GlareMerged { dropped, kept } => {
                // Both sides called each other at once: the application's call continues as
                // the one that survived (answered automatically), under the same id.
                if let Some(c) = self.by_wire(dropped) {
                    c.wire = Some(kept);
                    c.state = CallState::Answering;
                    events.push(Event::CallMerged { call: c.id });
                }
            }
            CallEvent::RejectedBusy { user, .. } => {
                let c = self.add(user.clone(), CallState::Incoming, Audio::silent());
                c.end(EndReason::RejectedBusy);
                events.push(Event::MissedBusy {
                    call: c.id,
                    from: user,
                });
            }
            CallEvent::Ended { call, reason } => {
                if let Some(c) = self.by_wire(call) {
                    events.push(c.end(end_reason(reason)));
                }
            }
        }
    }

    /// The connected call's path changed.
    pub fn on_path(&mut self, wire: WireId, kind: PathKind) -> Option<CallId> {
        let c = self.by_wire(wire)?;
        c.path = Some(kind);
        Some(c.id)
    }

    /// Fresh quality figures of the connected call.
    pub fn on_quality(&mut self, wire: WireId, quality: CallQuality) -> Option<Event> {
        let c = self.by_wire(wire)?;
        if let Some(a) = &c.media {
            a.on_report(&PeerReport {
                loss: quality.loss_out,
                loss_run: quality.loss_run_out,
                queue_ms: quality.queue_ms_out,
                recv_bps: quality.recv_bps_out,
                jitter_ms: quality.jitter_ms,
                rtt: quality.rtt,
            });
        }
        c.path = quality.kind.or(c.path);
        c.quality = Some(quality);
        Some(Event::CallStats {
            call: c.id,
            stats: Box::new(c.stats()),
        })
    }

    /// A media frame of the connected call.
    pub fn on_media(&mut self, wire: WireId, data: &[u8], events: &mut Vec<Event>) {
        let Some(c) = self.by_wire(wire) else {
            return;
        };
        if let Some(a) = &c.media {
            a.receive(data);
        }
        c.frames_in += 1;
        let now = Instant::now();
        match c.last_media {
            None if c.frames_in == 1 => events.push(Event::FirstMedia {
                call: c.id,
                after: now - c.started,
            }),
            // An interruption (a path switch, a loss burst) is worth an event.
            Some(t) if now - t >= Duration::from_millis(100) => events.push(Event::MediaGap {
                call: c.id,
                gap: now - t,
            }),
            _ => {}
        }
        c.last_media = Some(now);
    }
}

/// The client's form of why a call ended.
fn end_reason(r: natter_core::call::EndReason) -> EndReason {
    use natter_core::call::EndReason as R;
    match r {
        R::HungUp { local } => EndReason::HungUp { local },
        R::Declined { local } => EndReason::Declined { local },
        R::Busy => EndReason::Busy,
        R::Cancelled { local } => EndReason::Cancelled { local },
        R::Missed => EndReason::Missed,
        R::PeerVanished => EndReason::PeerVanished,
        R::AnsweredElsewhere => EndReason::AnsweredElsewhere,
    }
}

/// Place a call: an entry, then the dial on the runtime thread (bound to the entry there,
/// before its outcome can be reported).
pub(crate) fn dial(
    shared: &Arc<Shared>,
    rt: &RuntimeHandle<Node>,
    user: UserName,
    audio: Audio,
) -> Result<Call, CallError> {
    let id = {
        let mut t = lock(&shared.calls);
        if t.live().is_some() {
            return Err(CallError::InCall);
        }
        t.add_outgoing(user.clone(), audio)
    };
    let sh = shared.clone();
    // Events are handed out after commands run, so the binding exists before the dial's
    // outcome is drained.
    let placed = rt.command(move |n, now| {
        let dial = n.call(now, user);
        lock(&sh.dials).push((dial, id));
    });
    if placed.is_none() {
        lock(&shared.calls).forget(id);
        return Err(CallError::NotStarted);
    }
    Ok(Call {
        shared: Arc::downgrade(shared),
        id,
    })
}
