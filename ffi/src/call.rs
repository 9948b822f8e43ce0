//! Calls: start, answer, decline, hang up, hold, resume, mute, voice processing, statistics.
//!
//! A call is named by a `uint64_t` id, unique within its client and never reused (0 is never
//! a call). It is valid from `natter_call_start` (or the `NATTER_EVENT_CALL_INCOMING` event)
//! until well after its `NATTER_EVENT_CALL_ENDED` (the last 16 ended calls are kept for
//! `natter_call_get_stats`); an unknown id gives `NATTER_UNKNOWN_CALL`, never a crash. A
//! client has at most one call at a time.

use std::ffi::c_char;

use natter::{CallError, CallId, CallState, EndReason, PathKind, VoiceProcessing};

use crate::boundary::{self, str_arg};
use crate::client::Client;
use crate::handle::{self, NatterClient};
use crate::result::NatterResult;

/// A command on a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallOp {
    Answer,
    Decline,
    HangUp,
    Hold,
    Resume,
}

/// The C result of a refused call operation.
pub(crate) fn call_result(e: CallError) -> NatterResult {
    let r = match &e {
        CallError::NotStarted => NatterResult::NatterNotStarted,
        CallError::InvalidName { .. } => NatterResult::NatterInvalidUserName,
        CallError::InCall => NatterResult::NatterInCall,
        CallError::UnknownCall => NatterResult::NatterUnknownCall,
        CallError::NotDeviceAudio => NatterResult::NatterNotDeviceAudio,
        CallError::Device(_) => NatterResult::NatterAudioDeviceFailed,
        _ => NatterResult::NatterWrongCallState,
    };
    crate::last_error::record(r, e, Default::default())
}

/// Call `call` of `c`; an unknown id is `NATTER_NOT_STARTED` while the client is stopped
/// (commands need the node before anything else), else `NATTER_UNKNOWN_CALL`.
fn find(c: &Client, call: u64, stopped_first: bool) -> Result<natter::Call, NatterResult> {
    c.client
        .call_by_id(CallId::from_u64(call))
        .ok_or(if stopped_first && !c.client.is_started() {
            NatterResult::NatterNotStarted
        } else {
            NatterResult::NatterUnknownCall
        })
}

/// The C form of why a call ended.
impl From<EndReason> for NatterEndReason {
    fn from(r: EndReason) -> Self {
        match r {
            EndReason::HungUp { local: true } => Self::NatterEndHungUpLocal,
            EndReason::HungUp { local: false } => Self::NatterEndHungUpRemote,
            EndReason::Declined { local: true } => Self::NatterEndDeclinedLocal,
            EndReason::Declined { local: false } => Self::NatterEndDeclinedRemote,
            EndReason::Busy | EndReason::RejectedBusy => Self::NatterEndBusy,
            EndReason::Cancelled { local: true } => Self::NatterEndCancelledLocal,
            EndReason::Cancelled { local: false } => Self::NatterEndCancelledRemote,
            EndReason::Missed => Self::NatterEndMissed,
            EndReason::PeerVanished => Self::NatterEndPeerVanished,
            EndReason::AnsweredElsewhere => Self::NatterEndAnsweredElsewhere,
            EndReason::UserNotFound => Self::NatterEndUserNotFound,
            EndReason::UserOffline => Self::NatterEndUserOffline,
            EndReason::SearchUnavailable => Self::NatterEndSearchUnavailable,
            EndReason::Stopped => Self::NatterEndStopped,
            _ => Self::NatterEndRefused,
        }
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

fn call_state(s: CallState) -> NatterCallState {
    match s {
        CallState::Dialing => NatterCallState::NatterCallDialing,
        CallState::Ringing => NatterCallState::NatterCallRinging,
        CallState::Incoming => NatterCallState::NatterCallIncoming,
        CallState::Answering => NatterCallState::NatterCallAnswering,
        CallState::Active => NatterCallState::NatterCallActive,
        _ => NatterCallState::NatterCallEnded,
    }
}

/// The version of `NatterCallStats` this header describes.
pub const NATTER_CALL_STATS_VERSION: u32 = 2;

/// Voice processing flag: echo cancellation (WebRTC's AEC3) of captured audio, with what is
/// played as the reference (`natter_call_set_voice_processing`, `NatterOptions`).
pub const NATTER_VOICE_ECHO_CANCELLATION: u32 = 1;
/// Voice processing flag: noise suppression of captured audio.
pub const NATTER_VOICE_NOISE_SUPPRESSION: u32 = 2;
/// Voice processing flag: automatic gain control of captured audio.
pub const NATTER_VOICE_GAIN_CONTROL: u32 = 4;
/// Voice processing: decided by each call's audio (`NatterOptions::voice_processing`'s
/// default): all three flags with the devices (without a microphone that cannot be opened:
/// none), none with the application's audio. Not a flag: alone, never combined with the
/// others.
pub const NATTER_VOICE_PROCESSING_AUTO: u32 = 0x100;

/// The processing `flags` name: `None` for `NATTER_VOICE_PROCESSING_AUTO`.
pub(crate) fn voice_processing(flags: u32) -> Result<Option<VoiceProcessing>, NatterResult> {
    const ALL: u32 =
        NATTER_VOICE_ECHO_CANCELLATION | NATTER_VOICE_NOISE_SUPPRESSION | NATTER_VOICE_GAIN_CONTROL;
    if flags == NATTER_VOICE_PROCESSING_AUTO {
        return Ok(None);
    }
    if flags & !ALL != 0 {
        return Err(NatterResult::NatterInvalidArgument);
    }
    Ok(Some(VoiceProcessing {
        echo_cancellation: flags & NATTER_VOICE_ECHO_CANCELLATION != 0,
        noise_suppression: flags & NATTER_VOICE_NOISE_SUPPRESSION != 0,
        gain_control: flags & NATTER_VOICE_GAIN_CONTROL != 0,
    }))
}

/// Where version 1 of `NatterCallStats` ends: right after `mos`, with no padding before
/// `voice_processing` (checked at compile time).
const V1_END: usize = std::mem::offset_of!(NatterCallStats, voice_processing);
const _: () = assert!(V1_END == std::mem::offset_of!(NatterCallStats, mos) + 8);

/// The flags of `p`.
fn voice_flags(p: VoiceProcessing) -> u32 {
    (u32::from(p.echo_cancellation) * NATTER_VOICE_ECHO_CANCELLATION)
        | (u32::from(p.noise_suppression) * NATTER_VOICE_NOISE_SUPPRESSION)
        | (u32::from(p.gain_control) * NATTER_VOICE_GAIN_CONTROL)
}

/// Where a call stands.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterCallState {
    /// Outgoing: looking the callee up and inviting their devices.
    NatterCallDialing = 1,
    /// Outgoing: at least one of the callee's devices rings.
    NatterCallRinging = 2,
    /// Incoming: ringing here; answer or decline it.
    NatterCallIncoming = 3,
    /// Answered here; waiting for the caller's confirmation (a round trip).
    NatterCallAnswering = 4,
    /// Connected (see the hold flags).
    NatterCallActive = 5,
    /// Over (see the end reason).
    NatterCallEnded = 6,
}

/// Why a call ended (`NATTER_EVENT_CALL_ENDED`'s `code`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterEndReason {
    /// This side hung up.
    NatterEndHungUpLocal = 1,
    /// The other side hung up.
    NatterEndHungUpRemote = 2,
    /// This side declined the incoming call.
    NatterEndDeclinedLocal = 3,
    /// The callee declined.
    NatterEndDeclinedRemote = 4,
    /// Every device of the callee is in another call.
    NatterEndBusy = 5,
    /// This side hung up before the callee answered.
    NatterEndCancelledLocal = 6,
    /// The caller gave up before this side answered.
    NatterEndCancelledRemote = 7,
    /// Nobody answered within 45 s.
    NatterEndMissed = 8,
    /// Nothing came from the other side for 5 s (network lost, peer crashed).
    NatterEndPeerVanished = 9,
    /// Another device of this user answered.
    NatterEndAnsweredElsewhere = 10,
    /// The callee does not exist.
    NatterEndUserNotFound = 11,
    /// No device of the callee is online.
    NatterEndUserOffline = 12,
    /// The index could not be searched (not attached yet, too few super nodes answered).
    NatterEndSearchUnavailable = 13,
    /// The call could not be placed (this device was already in a call, too many devices).
    NatterEndRefused = 14,
    /// The client was stopped or freed.
    NatterEndStopped = 15,
}

/// How a connected call's media travels.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterPathKind {
    /// No path yet (not connected).
    NatterPathNone = 0,
    /// Directly over UDP within one LAN.
    NatterPathDirectLan = 1,
    /// Directly over UDP through the NATs (hole punching).
    NatterPathDirect = 2,
    /// Relayed by a super node, over UDP on this side.
    NatterPathRelayUdp = 3,
    /// Relayed by a super node, over TCP on this side.
    NatterPathRelayTcp = 4,
}

/// A call's state and statistics, filled by `natter_call_get_stats`. Set `version` to
/// `NATTER_CALL_STATS_VERSION` before the call: the library fills the fields of that
/// version (1 or 2). Figures not known yet are 0 (negative for `rtt_ms` and `echo_erle_db`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterCallStats {
    /// Set by the caller: `NATTER_CALL_STATS_VERSION`.
    pub version: u32,
    /// Where the call stands.
    pub state: NatterCallState,
    /// Why it ended (0 while it has not).
    pub end_reason: u32,
    /// Captured audio is replaced by silence (`natter_call_set_muted`).
    pub muted: bool,
    /// This side holds the call.
    pub local_hold: bool,
    /// The other side holds the call.
    pub remote_hold: bool,
    /// The media path.
    pub path: NatterPathKind,
    /// Milliseconds since the call connected (until it ended), 0 before.
    pub duration_ms: u64,
    /// Round-trip time on the media path in milliseconds; negative when unknown.
    pub rtt_ms: f64,
    /// Fraction (0 to 1) of the other side's media this side did not receive, last second.
    pub loss_in: f64,
    /// Fraction of this side's media the other side reported lost, last second.
    pub loss_out: f64,
    /// Interarrival jitter of received media, milliseconds.
    pub jitter_ms: f64,
    /// Media frames this side sent.
    pub frames_sent: u64,
    /// Media frames this side received.
    pub frames_received: u64,
    /// Media bytes sent (frames, without UDP/IP overhead).
    pub bytes_sent: u64,
    /// Milliseconds of received audio that had to be concealed (lost after FEC and
    /// redundancy).
    pub concealed_ms: f64,
    /// The jitter buffer's current delay, milliseconds.
    pub jitter_buffer_ms: f64,
    /// Estimated listening quality of received audio (MOS, 1 to 4.5), 0 before any audio.
    pub mos: f64,
    /// (Version 2.) The voice processing that runs on captured audio: `NATTER_VOICE_*`
    /// flags, 0 for none.
    pub voice_processing: u32,
    /// (Version 2.) How much the echo canceller's linear filter attenuates the echo, by its
    /// own estimate (echo return loss enhancement, dB; it starts near 0 and climbs as the
    /// filter learns the room; the suppressor after it goes much further); -1 while echo
    /// cancellation is off.
    pub echo_erle_db: f64,
}

/// Call `user` (every online device of theirs rings). Returns at once with the new call's id
/// in `*out_call`; progress arrives as events: `NATTER_EVENT_CALL_RINGING`,
/// `NATTER_EVENT_CALL_CONNECTED` (audio starts), and in the end `NATTER_EVENT_CALL_ENDED`
/// (also when the user does not exist or is offline: see `NatterEndReason`).
///
/// Returns `NATTER_NOT_STARTED`, `NATTER_IN_CALL` (this client already has a call),
/// `NATTER_INVALID_USER_NAME`, `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`,
/// `NATTER_INVALID_HANDLE`. `*out_call` is written only on success. Safe to call from any
/// thread.
///
/// # Safety
/// `user` must be NULL or a NUL-terminated string; `out_call` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_call_start(
    client: *mut NatterClient,
    user: *const c_char,
    out_call: *mut u64,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_call)?;
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let user = unsafe { str_arg(user) }?;
        let c = handle::get(client)?;
        let id = c
            .client
            .call(user, c.audio.clone())
            .map_err(call_result)?
            .id()
            .as_u64();
        // Its events say "outgoing", those of a call that ends before it is placed too.
        c.events.set_direction(
            id,
            crate::events::NatterCallDirection::NatterCallDirectionOutgoing,
        );
        // SAFETY: out_call is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_call, id) }
    })
}

fn command(client: *const NatterClient, call: u64, op: CallOp) -> NatterResult {
    boundary::result(|| {
        let c = handle::get(client)?;
        let call = find(&c, call, true)?;
        match op {
            CallOp::Answer => call.answer(c.audio.clone()),
            CallOp::Decline => call.decline(),
            CallOp::HangUp => call.hang_up(),
            CallOp::Hold => call.hold(),
            CallOp::Resume => call.resume(),
        }
        .map_err(call_result)
    })
}

/// Answer the incoming call `call` (ringing: `NATTER_EVENT_CALL_INCOMING`).
/// `NATTER_EVENT_CALL_CONNECTED` follows once the caller confirms.
///
/// Returns `NATTER_WRONG_CALL_STATE` when the call is not ringing here,
/// `NATTER_UNKNOWN_CALL`, `NATTER_NOT_STARTED`, `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_call_answer(client: *mut NatterClient, call: u64) -> NatterResult {
    command(client, call, CallOp::Answer)
}

/// Decline the incoming call `call`, for every device of this user (the caller hears
/// `NATTER_END_DECLINED_REMOTE`).
///
/// Returns `NATTER_WRONG_CALL_STATE` when the call is not ringing here,
/// `NATTER_UNKNOWN_CALL`, `NATTER_NOT_STARTED`, `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_call_decline(client: *mut NatterClient, call: u64) -> NatterResult {
    command(client, call, CallOp::Decline)
}

/// Hang up call `call`: a connected call ends for both sides, an outgoing one that was not
/// answered is cancelled (even while still dialling). `NATTER_EVENT_CALL_ENDED` follows.
///
/// Returns `NATTER_WRONG_CALL_STATE` when the call already ended, `NATTER_UNKNOWN_CALL`,
/// `NATTER_NOT_STARTED`, `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
#[no_mangle]
pub extern "C" fn natter_call_hang_up(client: *mut NatterClient, call: u64) -> NatterResult {
    command(client, call, CallOp::HangUp)
}

/// Put the connected call `call` on hold: no audio flows either way until
/// `natter_call_resume` (the path stays checked, about 3 small packets a second).
/// `NATTER_EVENT_CALL_HOLD_CHANGED` follows.
///
/// Returns `NATTER_WRONG_CALL_STATE` when the call is not connected, `NATTER_UNKNOWN_CALL`,
/// `NATTER_NOT_STARTED`, `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
#[no_mangle]
pub extern "C" fn natter_call_hold(client: *mut NatterClient, call: u64) -> NatterResult {
    command(client, call, CallOp::Hold)
}

/// Take the connected call `call` off hold (this side's hold; the other side's stays until it
/// resumes). `NATTER_EVENT_CALL_HOLD_CHANGED` follows.
///
/// Returns `NATTER_WRONG_CALL_STATE` when the call is not connected, `NATTER_UNKNOWN_CALL`,
/// `NATTER_NOT_STARTED`, `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
#[no_mangle]
pub extern "C" fn natter_call_resume(client: *mut NatterClient, call: u64) -> NatterResult {
    command(client, call, CallOp::Resume)
}

/// Mute (`muted` true) or unmute call `call`: while muted, captured audio is replaced by
/// silence before encoding (the other side hears silence; the call and its statistics go on).
/// Local only: the other side is not told. May be set before the call connects.
///
/// Returns `NATTER_WRONG_CALL_STATE` when the call ended, `NATTER_UNKNOWN_CALL`,
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_call_set_muted(
    client: *mut NatterClient,
    call: u64,
    muted: bool,
) -> NatterResult {
    boundary::result(|| {
        let c = handle::get(client)?;
        find(&c, call, false)?.set_muted(muted).map_err(call_result)
    })
}

/// Choose the voice processing of call `call`'s captured audio: `NATTER_VOICE_*` flags (0:
/// none; `NATTER_VOICE_PROCESSING_AUTO`: what the client's options say). At once while the
/// call is connected (the echo canceller then takes about a second to learn the room
/// again), else from when it connects. `NatterCallStats::voice_processing` tells what runs.
///
/// Returns `NATTER_INVALID_ARGUMENT` for unknown flags, `NATTER_WRONG_CALL_STATE` when the
/// call ended, `NATTER_UNKNOWN_CALL`, `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to
/// call from any thread.
#[no_mangle]
pub extern "C" fn natter_call_set_voice_processing(
    client: *mut NatterClient,
    call: u64,
    flags: u32,
) -> NatterResult {
    boundary::result(|| {
        let c = handle::get(client)?;
        let chosen = voice_processing(flags)?;
        find(&c, call, false)?
            .set_voice_processing(chosen)
            .map_err(call_result)
    })
}

/// Switch call `call`'s microphone to the device `device` (a `NatterAudioDevice`'s `id` or
/// `name` from `natter_audio_devices`; NULL: the one the options name, else the system's
/// default): at once while the call is connected (the old device is closed once the new one
/// is open), else for when it connects. Blocks while the device opens (typically
/// milliseconds, at most 3 s).
///
/// Returns `NATTER_NOT_DEVICE_AUDIO` when the call's audio does not come from a device
/// (`NATTER_AUDIO_APP`), `NATTER_AUDIO_DEVICE_FAILED` when the device cannot be opened (the
/// call keeps the one it had; `natter_last_error_message` says why),
/// `NATTER_WRONG_CALL_STATE` when the call ended, `NATTER_UNKNOWN_CALL`,
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// `device` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn natter_call_set_microphone(
    client: *mut NatterClient,
    call: u64,
    device: *const c_char,
) -> NatterResult {
    // SAFETY: the caller's guarantee for device is passed on.
    unsafe { set_device(client, call, device, true) }
}

/// Switch call `call`'s speaker to the device `device`: as `natter_call_set_microphone`.
///
/// Returns `NATTER_NOT_DEVICE_AUDIO` when the call's audio does not go to a device,
/// `NATTER_AUDIO_DEVICE_FAILED` when the device cannot be opened (the call keeps the one it
/// had), `NATTER_WRONG_CALL_STATE` when the call ended, `NATTER_UNKNOWN_CALL`,
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// `device` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn natter_call_set_speaker(
    client: *mut NatterClient,
    call: u64,
    device: *const c_char,
) -> NatterResult {
    // SAFETY: the caller's guarantee for device is passed on.
    unsafe { set_device(client, call, device, false) }
}

/// `natter_call_set_microphone` (`input`) and `natter_call_set_speaker`.
///
/// # Safety
/// `device` must be NULL or a NUL-terminated string.
unsafe fn set_device(
    client: *mut NatterClient,
    call: u64,
    device: *const c_char,
    input: bool,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let device = unsafe { boundary::opt_str_arg(device) }?;
        let c = handle::get(client)?;
        let call = find(&c, call, false)?;
        if input {
            call.set_microphone(device)
        } else {
            call.set_speaker(device)
        }
        .map_err(call_result)
    })
}

/// One audio device of the system (`natter_audio_devices`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterAudioDevice {
    /// Its name for people (NUL-terminated UTF-8, cut at a character boundary to fit).
    pub name: [c_char; 128],
    /// The system's identifier for it (NUL-terminated; on Linux `alsa:` and the ALSA name):
    /// pass it to `natter_call_set_microphone` / `natter_call_set_speaker` or as
    /// `NatterOptions::capture_device` / `playback_device`. An identifier longer than 255
    /// bytes is left empty (choose that device by its name).
    pub id: [c_char; 256],
    /// It can capture.
    pub input: bool,
    /// It can play.
    pub output: bool,
    /// The system's default microphone.
    pub default_input: bool,
    /// The system's default speaker.
    pub default_output: bool,
}

/// `text` into a fixed C buffer, NUL-terminated, cut at a character boundary (or left empty
/// when `whole` and it does not fit).
fn fixed<const N: usize>(text: &str, whole: bool) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    let mut end = text.len().min(N - 1);
    if whole && end < text.len() {
        return out;
    }
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for (o, b) in out.iter_mut().zip(&text.as_bytes()[..end]) {
        *o = *b as c_char;
    }
    out
}

/// List the system's audio devices (capture and playback; on Linux through ALSA, a few
/// milliseconds) into `out` (`cap` entries) and write their number to `*out_len`, even when
/// `cap` is too small. No client is needed. With `NATTER_AUDIO_DEVICES`, clients report
/// changes as `NATTER_EVENT_AUDIO_DEVICES_CHANGED` while started.
///
/// Returns `NATTER_BUFFER_TOO_SMALL` when `cap` entries are not enough (`*out_len` says how
/// many; call again), `NATTER_IO_ERROR` when the audio system cannot be asked,
/// `NATTER_NULL_ARGUMENT` (`out_len` NULL, or `out` NULL with `cap` > 0),
/// `NATTER_INVALID_ARGUMENT` (`cap` more than any buffer can hold, `out` not aligned). No devices (a
/// container, no sound card) is `NATTER_OK` with 0. Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for `cap` writes of `NatterAudioDevice`; `out_len` NULL or
/// valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_audio_devices(
    out: *mut NatterAudioDevice,
    cap: usize,
    out_len: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_len)?;
        boundary::check_out_slice(out, cap)?;
        crate::log::quiet_alsa();
        let devices = natter::audio_devices().map_err(|e| {
            crate::last_error::record(NatterResult::NatterIoError, e, Default::default())
        })?;
        let list: Vec<NatterAudioDevice> = devices
            .iter()
            .map(|d| NatterAudioDevice {
                name: fixed(&d.name, false),
                id: fixed(&d.id, true),
                input: d.input,
                output: d.output,
                default_input: d.default_input,
                default_output: d.default_output,
            })
            .collect();
        // SAFETY: out_len is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_len, list.len()) }?;
        if list.len() > cap {
            return Err(NatterResult::NatterBufferTooSmall);
        }
        // SAFETY: out is valid for cap >= list.len() writes (checked above and the caller's
        // promise).
        unsafe { boundary::copy_out_slice(&list, out) }
    })
}

/// Fill `*out_stats` with call `call`'s state and statistics (live while it runs, final once
/// it ended). Set `out_stats->version` to `NATTER_CALL_STATS_VERSION` first.
///
/// Returns `NATTER_UNKNOWN_CALL`, `NATTER_UNSUPPORTED_VERSION` (nothing written),
/// `NATTER_NULL_ARGUMENT` when `client` or `out_stats` is NULL, `NATTER_INVALID_HANDLE`.
/// Safe to call from any thread.
///
/// # Safety
/// `out_stats` must be NULL or point to a writable `NatterCallStats` whose `version` field is
/// set.
#[no_mangle]
pub unsafe extern "C" fn natter_call_get_stats(
    client: *const NatterClient,
    call: u64,
    out_stats: *mut NatterCallStats,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_stats)?;
        // SAFETY: out_stats is non-NULL and points to a NatterCallStats whose first field,
        // the version, the caller has set.
        let version = unsafe { std::ptr::addr_of!((*out_stats).version).read_unaligned() };
        if !(1..=NATTER_CALL_STATS_VERSION).contains(&version) {
            return Err(NatterResult::NatterUnsupportedVersion);
        }
        let c = handle::get(client)?;
        let st = find(&c, call, false)?.stats().map_err(call_result)?;
        let audio = st.audio.unwrap_or_default();
        let stats = NatterCallStats {
            version,
            state: call_state(st.state),
            end_reason: st.end_reason.map_or(0, |r| NatterEndReason::from(r) as u32),
            muted: st.muted,
            local_hold: st.local_hold,
            remote_hold: st.remote_hold,
            path: path_kind(st.path),
            duration_ms: u64::try_from(st.duration.as_millis()).unwrap_or(u64::MAX),
            rtt_ms: st.rtt.map_or(-1.0, |r| r.as_secs_f64() * 1000.0),
            loss_in: st.loss_in,
            loss_out: st.loss_out,
            jitter_ms: st.jitter_ms,
            frames_sent: audio.frames_sent,
            frames_received: audio.frames_received,
            bytes_sent: audio.bytes_sent,
            concealed_ms: audio.concealed_ms,
            jitter_buffer_ms: audio.jitter_buffer_ms,
            mos: audio.mos.unwrap_or(0.0),
            voice_processing: voice_flags(audio.voice_processing),
            echo_erle_db: audio.echo_erle_db.unwrap_or(-1.0),
        };
        if version == 1 {
            // Version 1 is this struct up to `voice_processing`: the same repr(C) fields in
            // the same order, ending with an f64 right before it (V1_END), so its size is
            // that field's offset.
            let v1 = V1_END;
            // SAFETY: out_stats is non-NULL and holds a version-1 NatterCallStats, v1 bytes
            // (the caller's promise); the source is a local of at least that size; byte
            // copies make no alignment assumption, and the two do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    std::ptr::addr_of!(stats).cast::<u8>(),
                    out_stats.cast::<u8>(),
                    v1,
                );
            }
            return Ok(());
        }
        // SAFETY: out_stats is non-NULL and holds a version-2 NatterCallStats (checked
        // above, the caller's promise), which is this struct.
        unsafe { boundary::write_out(out_stats, stats) }
    })
}
