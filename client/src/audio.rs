//! Where a call's audio comes from and goes to, and how its media starts.
//!
//! When a call connects, its media starts ([`natter_media::call::CallAudio`]: a thread named
//! `natter-media` that encodes a frame every 20 ms and plays out of the jitter buffer), with
//! the source and sink the call's [`Audio`] names. With [`AudioInput::App`] and
//! [`AudioOutput::App`] they are two bounded queues whose other ends are
//! [`Call::push_pcm`](crate::Call::push_pcm) and [`Call::pull_pcm`](crate::Call::pull_pcm):
//!
//! ```text
//!  application audio thread                  natter-media thread
//!  Call::push_pcm(samples) --- 400 ms queue --->  encoder --> network
//!  Call::pull_pcm(buffer)  <--- 400 ms queue ---  jitter buffer <-- network
//! ```
//!
//! Neither side waits for the other: a full capture queue drops its oldest samples, an empty
//! playback queue gives silence. Muting replaces captured audio with silence before the
//! encoder (which codes silence in a few bytes), so the call, its path checks and its
//! statistics go on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use natter_media::audio::pcm::{capture_channel, playback_channel, CapturePusher, PlaybackPuller};
use natter_media::audio::processing::VoiceProcessing;
use natter_media::audio::synth::{Silence, Tone};
use natter_media::audio::wav::{WavSink, WavSource};
use natter_media::audio::{AudioSink, AudioSource, SourceRead};
use natter_media::call::{CallAudio, CallAudioConfig, FrameSender, MediaTask};

use crate::events::AudioError;

/// The sample rate of call audio, in Hz: what [`Call::push_pcm`](crate::Call::push_pcm)
/// takes and [`Call::pull_pcm`](crate::Call::pull_pcm) gives (mono, signed 16-bit).
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples in one 20 ms frame: the natural amount to push and pull at a time.
pub const FRAME_SAMPLES: usize = 320;
/// Capacity of the application's queues, in milliseconds of audio.
const QUEUE_MS: u32 = 400;

/// Where a call's audio comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AudioInput {
    /// A microphone by name; `None`: the one [`AudioConfig::input_device`] names, else the
    /// system's default. When it cannot be opened, the call sends silence (or a test tone,
    /// see [`AudioConfig::tone_without_microphone`]) and an
    /// [`Event::AudioError`](crate::Event::AudioError) says why.
    Device(Option<String>),
    /// A WAV file (16 kHz mono, 16-bit), then silence once it ends.
    Wav(PathBuf),
    /// A 440 Hz test tone.
    Tone,
    /// Silence.
    Silence,
    /// PCM the application pushes with [`Call::push_pcm`](crate::Call::push_pcm).
    App,
}

/// Where a call's received audio goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AudioOutput {
    /// A speaker by name; `None`: the one [`AudioConfig::output_device`] names, else the
    /// system's default. When it cannot be opened, what arrives is dropped and an
    /// [`Event::AudioError`](crate::Event::AudioError) says why.
    Device(Option<String>),
    /// A WAV file (16 kHz mono, 16-bit), complete once the call ends.
    Wav(PathBuf),
    /// Nowhere (the call's statistics still count it).
    Discard,
    /// PCM the application pulls with [`Call::pull_pcm`](crate::Call::pull_pcm).
    App,
}

impl Default for AudioInput {
    /// The default microphone.
    fn default() -> Self {
        Self::Device(None)
    }
}

impl Default for AudioOutput {
    /// The default speaker.
    fn default() -> Self {
        Self::Device(None)
    }
}

/// A call's audio: where it comes from and where what arrives goes. The default is the
/// system's microphone and speaker.
///
/// ```
/// use natter::{Audio, AudioInput, AudioOutput};
/// let talk = Audio::devices();
/// let app = Audio::app(); // push_pcm / pull_pcm
/// let recorded = Audio::wav("speech.wav", Some("heard.wav"));
/// let mixed = Audio::new(AudioInput::Tone, AudioOutput::Wav("heard.wav".into()));
/// assert_eq!(talk, Audio::default());
/// # let _ = (app, recorded, mixed);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audio {
    /// Where it comes from.
    pub input: AudioInput,
    /// Where what arrives goes.
    pub output: AudioOutput,
}

impl Audio {
    /// From `input` to `output`.
    pub fn new(input: AudioInput, output: AudioOutput) -> Self {
        Self { input, output }
    }

    /// The default microphone and speaker (see [`AudioConfig`]).
    pub fn devices() -> Self {
        Self::default()
    }

    /// The application's PCM both ways ([`Call::push_pcm`](crate::Call::push_pcm),
    /// [`Call::pull_pcm`](crate::Call::pull_pcm)).
    pub fn app() -> Self {
        Self::new(AudioInput::App, AudioOutput::App)
    }

    /// Play a WAV file into the call; save what arrives to another (or drop it).
    pub fn wav(input: impl Into<PathBuf>, output: Option<impl Into<PathBuf>>) -> Self {
        Self::new(
            AudioInput::Wav(input.into()),
            output.map_or(AudioOutput::Discard, |o| AudioOutput::Wav(o.into())),
        )
    }

    /// A 440 Hz test tone out, nothing played.
    pub fn tone() -> Self {
        Self::new(AudioInput::Tone, AudioOutput::Discard)
    }

    /// Silence out, nothing played (signalling and path checks only).
    pub fn silent() -> Self {
        Self::new(AudioInput::Silence, AudioOutput::Discard)
    }

    /// The voice processing this audio needs by default: echo cancellation, noise
    /// suppression and gain control with a microphone and a speaker or the application's
    /// playback (what it pulls is played somewhere, and reaches the microphone); noise
    /// suppression and gain control with a microphone alone (what arrives goes to a file or
    /// nowhere); none without a microphone (a file, a tone, or the application's PCM, which it
    /// may have processed itself: it turns processing on with
    /// [`AudioConfig::voice_processing`] or [`Call::set_voice_processing`](crate::Call::set_voice_processing)).
    /// A call whose microphone (or speaker) cannot be opened is processed as if it had none.
    ///
    /// ```
    /// use natter::{Audio, VoiceProcessing};
    /// assert_eq!(Audio::devices().voice_processing(), VoiceProcessing::ALL);
    /// assert_eq!(Audio::app().voice_processing(), VoiceProcessing::OFF);
    /// ```
    pub fn voice_processing(&self) -> VoiceProcessing {
        auto_processing(
            matches!(self.input, AudioInput::Device(_)),
            matches!(self.output, AudioOutput::Device(_) | AudioOutput::App),
        )
    }
}

/// The default voice processing with (`true`) or without a microphone and something that
/// plays what arrives.
fn auto_processing(microphone: bool, playback: bool) -> VoiceProcessing {
    VoiceProcessing {
        echo_cancellation: microphone && playback,
        noise_suppression: microphone,
        gain_control: microphone,
    }
}

/// Audio settings of a client ([`ClientBuilder::audio`](crate::ClientBuilder::audio)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AudioConfig {
    /// The microphone [`AudioInput::Device(None)`](AudioInput::Device) means; `None`: the
    /// system's default.
    pub input_device: Option<String>,
    /// The speaker [`AudioOutput::Device(None)`](AudioOutput::Device) means; `None`: the
    /// system's default.
    pub output_device: Option<String>,
    /// Opus encoder complexity, 0 (least CPU) to 10 (best quality per bit). Default 10;
    /// lower it on slow devices (or under a memory checker, which slows code ~50 times).
    pub complexity: u8,
    /// Without a microphone, send a 440 Hz test tone instead of silence (default false):
    /// for demos and tests, where hearing something proves the path.
    pub tone_without_microphone: bool,
    /// While started, look at the system's audio devices every 3 s and report changes as
    /// [`Event::AudioDevicesChanged`](crate::Event::AudioDevicesChanged) (default false: for
    /// applications that use the devices and let their users pick them).
    pub watch_devices: bool,
    /// Echo cancellation, noise suppression and gain control of captured audio, for every
    /// call ([`Call::set_voice_processing`](crate::Call::set_voice_processing) changes one
    /// call's). `None` (the default): decided by each call's [`Audio`]
    /// ([`Audio::voice_processing`]): all three with a microphone and a speaker, noise
    /// suppression and gain control with a microphone alone, none without a microphone
    /// (files, tones and the application's PCM, which it may have processed already).
    pub voice_processing: Option<VoiceProcessing>,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            input_device: None,
            output_device: None,
            complexity: 10,
            tone_without_microphone: false,
            watch_devices: false,
            voice_processing: None,
        }
    }
}

/// An audio device of the system ([`audio_devices`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AudioDevice {
    /// Its name for people.
    pub name: String,
    /// The system's identifier for it (on Linux, `alsa:` and the ALSA name): pass this (or
    /// the name) to [`Call::set_microphone`](crate::Call::set_microphone),
    /// [`Call::set_speaker`](crate::Call::set_speaker), [`AudioInput::Device`] or
    /// [`AudioOutput::Device`].
    pub id: String,
    /// It can capture.
    pub input: bool,
    /// It can play.
    pub output: bool,
    /// The system's default microphone.
    pub default_input: bool,
    /// The system's default speaker.
    pub default_output: bool,
}

/// The system's audio devices now (capture and playback; on Linux through ALSA, a few
/// milliseconds). Empty without any (no sound card, a container).
///
/// # Errors
/// [`AudioError::Devices`] when the audio system cannot be asked.
pub fn audio_devices() -> Result<Vec<AudioDevice>, AudioError> {
    let list = natter_media::audio::device::list_devices()
        .map_err(|e| AudioError::Devices(e.to_string()))?;
    Ok(list
        .into_iter()
        .map(|d| AudioDevice {
            name: d.name,
            id: d.id,
            input: d.input,
            output: d.output,
            default_input: d.default_input,
            default_output: d.default_output,
        })
        .collect())
}

/// How a device switch queued on a call's media thread ended ([`SwapWait::wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Swap {
    /// The new device is in use.
    Done,
    /// The media stopped before its next frame (the task was dropped unrun).
    MediaStopped,
    /// Not done in time: the task was told not to swap, and will not.
    Abandoned,
}

/// Waits for a queued device switch; the task and the waiter agree on one outcome through a
/// flag that whichever comes first claims.
pub(crate) struct SwapWait {
    done: std::sync::mpsc::Receiver<()>,
    claimed: Arc<AtomicBool>,
}

impl SwapWait {
    /// Wait up to `within` for the swap; after that it is abandoned (unless the task claimed
    /// it first, then it is waited for: it is running).
    pub fn wait(self, within: std::time::Duration) -> Swap {
        use std::sync::mpsc::RecvTimeoutError;
        match self.done.recv_timeout(within) {
            Ok(()) => Swap::Done,
            Err(RecvTimeoutError::Disconnected) => Swap::MediaStopped,
            Err(RecvTimeoutError::Timeout) => {
                if self.claimed.swap(true, Ordering::SeqCst) {
                    // The task runs now: its answer comes within a frame.
                    match self.done.recv() {
                        Ok(()) => Swap::Done,
                        Err(_) => Swap::MediaStopped,
                    }
                } else {
                    Swap::Abandoned
                }
            }
        }
    }
}

/// Open the microphone (`input`) or speaker `name` (`None`: the configured or default one)
/// for a running call, and the task that swaps it in on the call's media thread before its
/// next frame (closing the old one there), with its waiter. Opening happens on the caller's
/// thread, so the call's audio goes on meanwhile; when it fails the call keeps its device.
pub(crate) fn prepare_switch(
    input: bool,
    name: Option<&str>,
    cfg: &AudioConfig,
    muted: Arc<AtomicBool>,
) -> Result<(MediaTask, SwapWait), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let claimed = Arc::new(AtomicBool::new(false));
    let claim = claimed.clone();
    let task: MediaTask = if input {
        let d = open_microphone(name, cfg, SAMPLE_RATE).map_err(|e| e.to_string())?;
        Box::new(move |source, _| {
            if claim.swap(true, Ordering::SeqCst) {
                return false; // abandoned: the new device is dropped
            }
            *source = Box::new(Muted {
                inner: Box::new(d),
                muted,
            });
            let _ = tx.send(());
            true
        })
    } else {
        let d = open_speaker(name, cfg, SAMPLE_RATE).map_err(|e| e.to_string())?;
        Box::new(move |_, sink| {
            if claim.swap(true, Ordering::SeqCst) {
                return false;
            }
            let mut old = std::mem::replace(sink, Box::new(d));
            let _ = old.finish();
            let _ = tx.send(());
            false
        })
    };
    Ok((task, SwapWait { done: rx, claimed }))
}

/// How often [`DeviceWatch`] looks at the devices.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// A thread that lists the system's audio devices every 3 s and reports changes
/// ([`AudioConfig::watch_devices`]); stopped and joined when dropped (within 100 ms).
pub(crate) struct DeviceWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeviceWatch {
    /// Start watching; changes go to `events`.
    pub fn spawn(events: crate::events::Events) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("natter-audio-watch".into())
            .spawn(move || {
                let mut known = audio_devices().unwrap_or_default();
                let mut last = std::time::Instant::now();
                while !flag.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if last.elapsed() < WATCH_EVERY {
                        continue;
                    }
                    last = std::time::Instant::now();
                    let Ok(now) = audio_devices() else { continue };
                    let added: Vec<_> =
                        now.iter().filter(|d| !known.contains(d)).cloned().collect();
                    let removed: Vec<_> =
                        known.iter().filter(|d| !now.contains(d)).cloned().collect();
                    if !added.is_empty() || !removed.is_empty() {
                        events.push(crate::Event::AudioDevicesChanged { added, removed });
                    }
                    known = now;
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The application's ends of a call's PCM queues.
#[derive(Clone, Default)]
pub(crate) struct AppPcm {
    pub push: Option<CapturePusher>,
    pub pull: Option<PlaybackPuller>,
}

/// What starting a call's media gave.
pub(crate) struct Started {
    /// The media thread, unless it could not start.
    pub media: Option<CallAudio>,
    /// The application's queues.
    pub pcm: AppPcm,
    /// What went wrong (the call goes on with silence in its place).
    pub errors: Vec<AudioError>,
    /// The voice processing the audio that opened needs by default
    /// ([`Audio::voice_processing`], without the devices that failed).
    pub auto: VoiceProcessing,
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

    fn read_frame(
        &mut self,
        frame: &mut [i16],
    ) -> Result<SourceRead, natter_media::audio::AudioError> {
        let r = self.inner.read_frame(frame)?;
        if self.muted.load(Ordering::Relaxed) && r == SourceRead::Frame {
            frame.fill(0);
        }
        Ok(r)
    }

    fn discard_backlog(&mut self, keep: usize) {
        self.inner.discard_backlog(keep);
    }
}

/// A sink that drops what it is given.
struct Discard(u32);

impl AudioSink for Discard {
    fn sample_rate(&self) -> u32 {
        self.0
    }

    fn write_frame(&mut self, _frame: &[i16]) -> Result<(), natter_media::audio::AudioError> {
        Ok(())
    }
}

fn tone(rate: u32) -> Box<dyn AudioSource + Send> {
    Box::new(Tone::new(rate, 440.0, 0.25))
}

/// The microphone `name` (else the configured one, else the system's default).
fn open_microphone(
    name: Option<&str>,
    cfg: &AudioConfig,
    rate: u32,
) -> Result<natter_media::audio::device::CaptureDevice, natter_media::audio::AudioError> {
    let name = name.or(cfg.input_device.as_deref());
    let d = natter_media::audio::device::CaptureDevice::open(name, rate)?;
    tracing::info!(device = d.name(), "audio in");
    Ok(d)
}

/// The speaker `name` (else the configured one, else the system's default).
fn open_speaker(
    name: Option<&str>,
    cfg: &AudioConfig,
    rate: u32,
) -> Result<natter_media::audio::device::PlaybackDevice, natter_media::audio::AudioError> {
    let name = name.or(cfg.output_device.as_deref());
    let d = natter_media::audio::device::PlaybackDevice::open(name, rate)?;
    tracing::info!(device = d.name(), "audio out");
    Ok(d)
}

fn open_input(
    input: &AudioInput,
    cfg: &AudioConfig,
    rate: u32,
    pcm: &mut AppPcm,
    errors: &mut Vec<AudioError>,
) -> Box<dyn AudioSource + Send> {
    match input {
        AudioInput::Device(name) => match open_microphone(name.as_deref(), cfg, rate) {
            Ok(d) => Box::new(d),
            Err(e) => {
                let (src, instead) = if cfg.tone_without_microphone {
                    (tone(rate), "a 440 Hz test tone")
                } else {
                    (
                        Box::new(Silence::new(rate)) as Box<dyn AudioSource + Send>,
                        "silence",
                    )
                };
                errors.push(AudioError::Microphone {
                    reason: e.to_string(),
                    instead,
                });
                src
            }
        },
        AudioInput::Wav(path) => match WavSource::open(path) {
            Ok(w) => Box::new(w),
            Err(e) => {
                errors.push(AudioError::Wav {
                    path: path.clone(),
                    reason: e.to_string(),
                });
                Box::new(Silence::new(rate))
            }
        },
        AudioInput::Tone => tone(rate),
        AudioInput::Silence => Box::new(Silence::new(rate)),
        AudioInput::App => {
            let (pusher, reader) = capture_channel(rate, (rate * QUEUE_MS / 1000) as usize);
            pcm.push = Some(pusher);
            Box::new(reader)
        }
    }
}

fn open_output(
    output: &AudioOutput,
    cfg: &AudioConfig,
    rate: u32,
    pcm: &mut AppPcm,
    errors: &mut Vec<AudioError>,
) -> Box<dyn AudioSink + Send> {
    match output {
        AudioOutput::Device(name) => match open_speaker(name.as_deref(), cfg, rate) {
            Ok(d) => Box::new(d),
            Err(e) => {
                errors.push(AudioError::Speaker {
                    reason: e.to_string(),
                });
                Box::new(Discard(rate))
            }
        },
        AudioOutput::Wav(path) => match WavSink::create(path, rate) {
            Ok(w) => Box::new(w),
            Err(e) => {
                errors.push(AudioError::Wav {
                    path: path.clone(),
                    reason: e.to_string(),
                });
                Box::new(Discard(rate))
            }
        },
        AudioOutput::Discard => Box::new(Discard(rate)),
        AudioOutput::App => {
            let (writer, puller) = playback_channel(rate, (rate * QUEUE_MS / 1000) as usize);
            pcm.pull = Some(puller);
            Box::new(writer)
        }
    }
}

/// The voice processing of a call: its own choice, else the client's, else `auto` (what its
/// audio needs, [`Started::auto`]).
pub(crate) fn voice_processing(
    cfg: &AudioConfig,
    call: Option<VoiceProcessing>,
    auto: VoiceProcessing,
) -> VoiceProcessing {
    call.or(cfg.voice_processing).unwrap_or(auto)
}

/// Start a call's media: `audio` in and out, frames to `send`, silence while `muted`, with
/// the voice processing `processing` (`None`: the client's, else the audio's default).
pub(crate) fn start(
    audio: &Audio,
    cfg: &AudioConfig,
    processing: Option<VoiceProcessing>,
    send: FrameSender,
    muted: Arc<AtomicBool>,
) -> Started {
    let mut media_cfg = CallAudioConfig::default();
    media_cfg.sender.codec.complexity = cfg.complexity;
    let rate = media_cfg.sender.codec.rate.hz();
    let mut errors = Vec::new();
    let mut pcm = AppPcm::default();
    let source = open_input(&audio.input, cfg, rate, &mut pcm, &mut errors);
    let sink = open_output(&audio.output, cfg, rate, &mut pcm, &mut errors);
    // A microphone that could not be opened sends silence or a test tone: nothing to process.
    let failed = |f: fn(&AudioError) -> bool| errors.iter().any(f);
    let auto = auto_processing(
        matches!(audio.input, AudioInput::Device(_))
            && !failed(|e| matches!(e, AudioError::Microphone { .. })),
        matches!(audio.output, AudioOutput::Device(_) | AudioOutput::App)
            && !failed(|e| matches!(e, AudioError::Speaker { .. })),
    );
    media_cfg.processing = voice_processing(cfg, processing, auto);
    let source = Box::new(Muted {
        inner: source,
        muted,
    });
    match CallAudio::start(media_cfg, source, sink, send) {
        Ok(media) => Started {
            media: Some(media),
            pcm,
            errors,
            auto,
        },
        Err(e) => {
            errors.push(AudioError::Engine(e.to_string()));
            Started {
                media: None,
                pcm: AppPcm::default(),
                errors,
                auto,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    fn frames_sent(audio: &Audio, muted: bool) -> (Started, Arc<Mutex<Vec<Vec<u8>>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s = sent.clone();
        let send = Box::new(move |f: &[u8]| {
            s.lock().unwrap().push(f.to_vec());
            true
        });
        let cfg = AudioConfig {
            complexity: 0,
            ..AudioConfig::default()
        };
        let started = start(audio, &cfg, None, send, Arc::new(AtomicBool::new(muted)));
        (started, sent)
    }

    fn wait_frames(sent: &Mutex<Vec<Vec<u8>>>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn missing_devices_and_files_are_errors_and_the_call_goes_on_with_silence() {
        let audio = Audio::new(
            AudioInput::Device(Some("no-such-microphone".into())),
            AudioOutput::Device(Some("no-such-speaker".into())),
        );
        let (started, sent) = frames_sent(&audio, false);
        assert_eq!(started.errors.len(), 2, "{:?}", started.errors);
        assert!(matches!(started.errors[0], AudioError::Microphone { .. }));
        assert!(matches!(started.errors[1], AudioError::Speaker { .. }));
        assert!(started.errors[0].to_string().contains("sending silence"));
        // Nothing opened: nothing to process.
        assert_eq!(started.auto, VoiceProcessing::OFF);
        let media = started.media.expect("media runs anyway");
        assert_eq!(media.stats().processing, VoiceProcessing::OFF);
        wait_frames(&sent, 5);
        media.stop();
        assert!(
            sent.lock().unwrap().len() >= 5,
            "frames of silence are sent"
        );

        let (started, _) = frames_sent(
            &Audio::wav("/nonexistent/speech.wav", None::<PathBuf>),
            false,
        );
        assert!(matches!(started.errors[..], [AudioError::Wav { .. }]));
        assert!(started.media.is_some());
    }

    #[test]
    fn application_pcm_goes_out_unless_muted() {
        for muted in [false, true] {
            let (started, sent) = frames_sent(&Audio::app(), muted);
            assert!(started.errors.is_empty());
            let push = started.pcm.push.clone().unwrap();
            assert!(started.pcm.pull.is_some());
            let tone: Vec<i16> = (0..6400)
                .map(|i| if i % 40 < 20 { 9000 } else { -9000 })
                .collect();
            push.push(&tone);
            // Every pushed frame is encoded once the media thread has sent 15 frames.
            wait_frames(&sent, 15);
            started.media.unwrap().stop();
            let frames = sent.lock().unwrap().clone();
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
