//! Call audio: the built-in devices, or PCM the application pushes and pulls.
//!
//! When a call connects, its media starts ([`natter_media::call::CallAudio`]: a media thread
//! that encodes a frame every 20 ms and plays out of the jitter buffer). With
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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use natter_core::wire::message::CallId;
use natter_media::audio::pcm::{capture_channel, playback_channel, CapturePusher, PlaybackPuller};
use natter_media::audio::synth::Silence;
use natter_media::audio::{AudioError, AudioSink, AudioSource, SourceRead};
use natter_media::call::{CallAudio, CallAudioConfig, FrameSender};
use natter_overlay::node::Node;
use natter_transport::runtime::RuntimeHandle;

use crate::boundary::{self, lock};
use crate::handle::{self, NatterClient};
use crate::options::{AudioMode, AudioSettings};
use crate::result::NatterResult;

/// The sample rate of call audio, in Hz.
const SAMPLE_RATE: u32 = 16_000;
/// Samples in one 20 ms frame.
const FRAME_SAMPLES: u32 = SAMPLE_RATE / 50;
/// Capacity of the application's queues, in milliseconds of audio.
const QUEUE_MS: u32 = 400;

/// What starting a call's audio gave.
pub(crate) struct Started {
    /// The media thread, unless it could not start.
    pub audio: Option<CallAudio>,
    /// The application's ends of the queues (`NATTER_AUDIO_APP`).
    pub pcm: Option<(CapturePusher, PlaybackPuller)>,
    /// What went wrong (the call then goes on with silence, or without media).
    pub error: Option<String>,
}

/// A source whose frames become silence while `muted` is set (it still reads its input, so
/// no stale audio piles up).
struct Muted {
    inner: Box<dyn AudioSource + Send>,
    muted: Arc<AtomicBool>,
}

impl AudioSource for Muted {
    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }

    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        let r = self.inner.read_frame(frame)?;
        if self.muted.load(Ordering::Relaxed) && r == SourceRead::Frame {
            frame.fill(0);
        }
        Ok(r)
    }
}

/// A sink that drops what it is given.
struct Discard(u32);

impl AudioSink for Discard {
    fn sample_rate(&self) -> u32 {
        self.0
    }

    fn write_frame(&mut self, _frame: &[i16]) -> Result<(), AudioError> {
        Ok(())
    }
}

/// Start the media of the connected call `call` on the node behind `rt`.
pub(crate) fn start(
    audio: &AudioSettings,
    rt: RuntimeHandle<Node>,
    call: CallId,
    muted: Arc<AtomicBool>,
) -> Started {
    let send = Box::new(move |frame: &[u8]| {
        let frame = frame.to_vec();
        rt.command(move |n, now| n.send_media(now, call, &frame).is_ok())
            .unwrap_or(false)
    });
    start_with(audio, send, muted)
}

/// Start a call's media that hands its frames to `send`.
fn start_with(audio: &AudioSettings, send: FrameSender, muted: Arc<AtomicBool>) -> Started {
    let mut cfg = CallAudioConfig::default();
    cfg.sender.codec.complexity = audio.complexity;
    let rate = cfg.sender.codec.rate.hz();
    let mut error = None;
    let mut pcm = None;
    let (source, sink): (Box<dyn AudioSource + Send>, Box<dyn AudioSink + Send>) = match &audio.mode
    {
        AudioMode::App => {
            let capacity = (rate * QUEUE_MS / 1000) as usize;
            let (pusher, reader) = capture_channel(rate, capacity);
            let (writer, puller) = playback_channel(rate, capacity);
            pcm = Some((pusher, puller));
            (Box::new(reader), Box::new(writer))
        }
        AudioMode::Devices { capture, playback } => {
            devices(capture.as_deref(), playback.as_deref(), rate, &mut error)
        }
    };
    let source = Box::new(Muted {
        inner: source,
        muted,
    });
    match CallAudio::start(cfg, source, sink, send) {
        Ok(audio) => Started {
            audio: Some(audio),
            pcm,
            error,
        },
        Err(e) => Started {
            audio: None,
            pcm: None,
            error: Some(format!("call audio: {e}")),
        },
    }
}

fn devices(
    capture: Option<&str>,
    playback: Option<&str>,
    rate: u32,
    error: &mut Option<String>,
) -> (Box<dyn AudioSource + Send>, Box<dyn AudioSink + Send>) {
    use natter_media::audio::device::{CaptureDevice, PlaybackDevice};
    let mut why = Vec::new();
    let source: Box<dyn AudioSource + Send> = match CaptureDevice::open(capture, rate) {
        Ok(d) => Box::new(d),
        Err(e) => {
            why.push(format!("microphone: {e}"));
            Box::new(Silence::new(rate))
        }
    };
    let sink: Box<dyn AudioSink + Send> = match PlaybackDevice::open(playback, rate) {
        Ok(d) => Box::new(d),
        Err(e) => {
            why.push(format!("speaker: {e}"));
            Box::new(Discard(rate))
        }
    };
    if !why.is_empty() {
        *error = Some(why.join("; "));
    }
    (source, sink)
}

/// The sample rate of call audio in Hz (16000): what `natter_call_push_audio` takes and
/// `natter_call_pull_audio` gives (mono, signed 16-bit, native byte order). Safe to call from
/// any thread.
#[no_mangle]
pub extern "C" fn natter_audio_sample_rate() -> u32 {
    SAMPLE_RATE
}

/// Samples in one 20 ms frame (320): the natural amount to push and pull at a time, though
/// any amount works. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_audio_frame_samples() -> u32 {
    FRAME_SAMPLES
}

/// Queue `count` captured samples (mono, signed 16-bit, at `natter_audio_sample_rate()`) for
/// sending in call `call` of `client`, which uses `NATTER_AUDIO_APP`. Call it from your audio
/// capture callback or loop, in real time; it never blocks beyond a copy. The queue holds
/// 400 ms: beyond that the oldest samples are dropped. While the call is muted or held the
/// samples are consumed and not sent. The samples are copied; the caller keeps `samples`.
///
/// Returns `NATTER_NO_AUDIO` when the call is not connected (yet, or any more) or the client
/// uses the devices, `NATTER_UNKNOWN_CALL` for an unknown call, `NATTER_NULL_ARGUMENT` when
/// `client` is NULL or `samples` is NULL with `count > 0`, `NATTER_INVALID_HANDLE` when
/// `client` is not live. Safe to call from any thread.
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
        let c = handle::get(client)?;
        let pusher = {
            let mut t = lock(&c.shared.calls);
            let e = t.get(call).ok_or(NatterResult::NatterUnknownCall)?;
            e.pcm
                .as_ref()
                .map(|(p, _)| p.clone())
                .ok_or(NatterResult::NatterNoAudio)?
        };
        pusher.push(samples);
        Ok(())
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
/// `NATTER_INVALID_HANDLE` when `client` is not live. Safe to call from any thread.
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
        let c = handle::get(client)?;
        let puller = {
            let mut t = lock(&c.shared.calls);
            let e = t.get(call).ok_or(NatterResult::NatterUnknownCall)?;
            e.pcm
                .as_ref()
                .map(|(_, p)| p.clone())
                .ok_or(NatterResult::NatterNoAudio)?
        };
        let mut buf = vec![0i16; count];
        let real = puller.pull(&mut buf);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    fn frames_sent(audio: AudioSettings, muted: bool) -> (Started, Arc<Mutex<Vec<Vec<u8>>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let send = Box::new(move |f: &[u8]| {
            lock(&s).push(f.to_vec());
            true
        });
        let started = start_with(&audio, send, Arc::new(AtomicBool::new(muted)));
        (started, sent)
    }

    #[test]
    fn missing_devices_give_an_error_and_the_call_goes_on_with_silence() {
        let (started, sent) = frames_sent(
            AudioSettings {
                mode: AudioMode::Devices {
                    capture: Some("no-such-microphone".into()),
                    playback: Some("no-such-speaker".into()),
                },
                complexity: 0,
            },
            false,
        );
        let why = started.error.clone().expect("an error for missing devices");
        assert!(
            why.contains("microphone") && why.contains("speaker"),
            "{why}"
        );
        assert!(started.pcm.is_none());
        let audio = started.audio.expect("media runs anyway");
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&sent).len() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        audio.stop();
        assert!(lock(&sent).len() >= 5, "frames of silence are sent");
    }

    #[test]
    fn application_pcm_goes_out_unless_muted() {
        for muted in [false, true] {
            let (started, sent) = frames_sent(
                AudioSettings {
                    mode: AudioMode::App,
                    complexity: 0,
                },
                muted,
            );
            assert!(started.error.is_none());
            let (pusher, _puller) = started.pcm.clone().unwrap();
            let tone: Vec<i16> = (0..16_000)
                .map(|i| if i % 40 < 20 { 9000 } else { -9000 })
                .collect();
            pusher.push(&tone[..6400]);
            std::thread::sleep(Duration::from_millis(300));
            let audio = started.audio.unwrap();
            audio.stop();
            let frames = lock(&sent).clone();
            assert!(frames.len() >= 5);
            // Opus codes silence in a few bytes and a loud tone in many more.
            let biggest = frames.iter().map(Vec::len).max().unwrap();
            if muted {
                assert!(biggest < 20, "muted: frames of {biggest} bytes");
            } else {
                assert!(biggest > 30, "unmuted: frames of at most {biggest} bytes");
            }
        }
    }
}
