//! Call audio: the built-in devices, or PCM the application pushes and pulls.
//!
//! When a call connects, its media starts (see the `natter` crate's `audio` module: a media
//! thread that encodes a frame every 20 ms and plays out of the jitter buffer). With
//! `NATTER_AUDIO_DEVICES` its source and sink are the microphone and the speaker; with
//! `NATTER_AUDIO_APP` they are two bounded queues whose other ends are
//! `natter_call_push_audio` and `natter_call_pull_audio`:
//!
//! ```text
//!  application audio thread                       media thread
//!  natter_call_push_audio(samples) --- 400 ms queue --->  encoder --> network
//!  natter_call_pull_audio(buffer)  <--- 400 ms queue ---  jitter buffer <-- network
//! ```
//!
//! Neither side waits for the other: a full capture queue drops its oldest samples, an empty
//! playback queue gives silence. Muting replaces captured audio with silence before the
//! encoder (which codes silence in a few bytes), so the call, its path checks and its
//! statistics go on.

use natter::{CallId, PcmError};

use crate::boundary;
use crate::handle::{self, NatterClient};
use crate::result::NatterResult;

fn pcm_result(e: PcmError) -> NatterResult {
    let r = match &e {
        PcmError::UnknownCall => NatterResult::NatterUnknownCall,
        _ => NatterResult::NatterNoAudio,
    };
    crate::last_error::record(r, e, Default::default())
}

/// The call `call` of `client`, for its PCM.
fn call_of(client: *mut NatterClient, call: u64) -> Result<natter::Call, NatterResult> {
    handle::get(client)?
        .client
        .call_by_id(CallId::from_u64(call))
        .ok_or(NatterResult::NatterUnknownCall)
}

/// The sample rate of call audio in Hz (16000): what `natter_call_push_audio` takes and
/// `natter_call_pull_audio` gives (mono, signed 16-bit, native byte order). Safe to call from
/// any thread.
#[no_mangle]
pub extern "C" fn natter_audio_sample_rate() -> u32 {
    natter::SAMPLE_RATE
}

/// Samples in one 20 ms frame (320): the natural amount to push and pull at a time, though
/// any amount works. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_audio_frame_samples() -> u32 {
    natter::FRAME_SAMPLES as u32
}

/// Queue `count` captured samples (mono, signed 16-bit, at `natter_audio_sample_rate()`) for
/// sending in call `call` of `client`, which uses `NATTER_AUDIO_APP`. Call it from your audio
/// capture callback or loop, in real time; it never blocks beyond a copy. The queue holds
/// 400 ms: beyond that the oldest samples are dropped. While the call is muted or held the
/// samples are consumed and not sent. The samples are copied; the caller keeps `samples`.
///
/// Returns `NATTER_NO_AUDIO` when the call is not connected (yet, or any more) or the client
/// uses the devices, `NATTER_UNKNOWN_CALL` for an unknown call, `NATTER_NULL_ARGUMENT` when
/// `client` is NULL or `samples` is NULL with `count > 0`, `NATTER_INVALID_ARGUMENT` when
/// `count` is more than any buffer can hold (over `PTRDIFF_MAX` bytes) or `samples` is not
/// aligned, `NATTER_INVALID_HANDLE` when `client` is not live. Safe to call from any thread.
///
/// # Safety
/// `samples` must be NULL or point to `count` readable `int16_t`.
#[no_mangle]
pub unsafe extern "C" fn natter_call_push_audio(
    client: *mut NatterClient,
    call: u64,
    samples: *const i16,
    count: usize,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees `count` readable samples at `samples` (or NULL, which
        // slice_arg refuses when count > 0).
        let samples = unsafe { boundary::slice_arg(samples, count) }?;
        call_of(client, call)?.push_pcm(samples).map_err(pcm_result)
    })
}

/// Take `count` samples to play (mono, signed 16-bit, at `natter_audio_sample_rate()`) from
/// call `call` of `client`, which uses `NATTER_AUDIO_APP`, into `out`; where fewer were
/// received, the rest of `out` is silence. `*out_received` (when not NULL) gets the number of
/// real samples written before the silence. Call it from your playback callback or loop, in
/// real time; it never blocks beyond a copy.
///
/// Returns `NATTER_NO_AUDIO` when the call is not connected (yet, or any more) or the client
/// uses the devices (`out` is then untouched), `NATTER_UNKNOWN_CALL` for an unknown call,
/// `NATTER_NULL_ARGUMENT` when `client` is NULL or `out` is NULL with `count > 0`,
/// `NATTER_INVALID_ARGUMENT` when `count` is more than any buffer can hold (over
/// `PTRDIFF_MAX` bytes) or `out` is not aligned, `NATTER_INVALID_HANDLE` when `client` is not
/// live. Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for `count` writes of `int16_t`; `out_received` must be NULL
/// or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_call_pull_audio(
    client: *mut NatterClient,
    call: u64,
    out: *mut i16,
    count: usize,
    out_received: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out_slice(out, count)?;
        let call = call_of(client, call)?;
        let mut buf = vec![0i16; count];
        let real = call.pull_pcm(&mut buf).map_err(pcm_result)?;
        // SAFETY: out is checked (non-NULL and aligned when count > 0) and the caller
        // guarantees count writable samples.
        unsafe { boundary::copy_out_slice(&buf, out)? };
        if !out_received.is_null() {
            // SAFETY: out_received is non-NULL and valid for one write (caller's promise).
            unsafe { boundary::write_out(out_received, real)? };
        }
        Ok(())
    })
}
