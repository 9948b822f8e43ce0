//! The media of one call: a thread that captures, encodes and sends, and plays what arrives.
//!
//! [`CallAudio`] ties the engine to a call without knowing how frames travel: it calls a
//! `send` function with each media frame (the call layer seals it on the call's session) and
//! takes received frames with [`CallAudio::receive`] from whatever thread hears them. Its
//! *media thread* runs a fixed clock: every frame period it pulls one frame of playout from
//! the jitter buffer into the [`AudioSink`], then reads one frame from the [`AudioSource`]
//! (silence once it ended), encodes it and sends it. Quality reports of the call layer
//! (loss the peer saw, jitter, RTT) feed the sender's adaptation with
//! [`CallAudio::on_report`]. With [`CallAudioConfig::processing`] on, captured frames go
//! through echo cancellation, noise suppression and gain control before the encoder, with
//! every played frame as the echo canceller's reference ([`crate::audio::processing`]).
//!
//! | thread | calls |
//! |---|---|
//! | any | [`CallAudio::receive`], [`CallAudio::on_report`], [`CallAudio::set_paused`], [`CallAudio::set_processing`], [`CallAudio::stats`], [`CallAudio::on_media_thread`] |
//! | owner | [`CallAudio::start`], [`CallAudio::stop`] |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::audio::processing::{ProcessingStats, VoiceProcessing, VoiceProcessor};
use crate::audio::{AudioError, AudioSink, AudioSource, SourceRead};
use crate::codec::CodecError;
use crate::receiver::{MediaReceiver, ReceiverConfig, ReceiverReport, ReceiverStats};
use crate::sender::{MediaSender, SenderConfig, SenderStats};

/// Why a call's media could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallAudioError {
    /// The codec could not be set up.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A source or sink runs at another sample rate than the codec.
    #[error("the audio {what} runs at {got} Hz, the codec at {want} Hz")]
    Rate {
        /// "source" or "sink".
        what: &'static str,
        /// Its rate.
        got: u32,
        /// The codec's.
        want: u32,
    },
    /// The media thread could not be started.
    #[error("starting the media thread: {0}")]
    Thread(std::io::Error),
    /// Voice processing does not take the codec's or the sink's rate.
    #[error(transparent)]
    Processing(#[from] AudioError),
}

/// What the peer measured of this side's media, from the call layer's receiver reports
/// ([`CallAudio::on_report`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeerReport {
    /// The fraction of our frames the peer did not receive (0 to 1).
    pub loss: f64,
    /// The mean length of the runs they went missing in (`None`: unknown, taken as random
    /// loss).
    pub loss_run: Option<f64>,
    /// The mean queuing delay of our frames at the peer, ms (`None`: unknown).
    pub queue_ms: Option<f64>,
    /// The rate of our media the peer received on the wire, bit/s (`None`: unknown).
    pub recv_bps: Option<f64>,
    /// The peer's interarrival jitter, ms.
    pub jitter_ms: f64,
    /// The round-trip time.
    pub rtt: Option<Duration>,
}

impl PeerReport {
    /// The report as the sender takes it: the call layer reports once a second, so `frames`
    /// frames of the current size were due (the loss fraction and the mean run are the
    /// peer's; without its queue and rate the congestion controller sets no limit).
    pub fn as_receiver_report(&self, frames: u16) -> ReceiverReport {
        let lost = (self.loss.clamp(0.0, 1.0) * f64::from(frames)).round() as u16;
        ReceiverReport {
            frames,
            lost,
            mean_burst: if lost == 0 {
                0.0
            } else {
                self.loss_run
                    .filter(|r| r.is_finite())
                    .unwrap_or(1.0)
                    .max(1.0)
            },
            jitter_ms: self.jitter_ms,
            queue_ms: self.queue_ms.unwrap_or(0.0),
            recv_bps: self.recv_bps.unwrap_or(0.0),
        }
    }
}

/// Hands a media frame to the call layer; false when it could not be sent.
pub type FrameSender = Box<dyn FnMut(&[u8]) -> bool + Send>;

/// The source a call's media reads.
pub type Source = Box<dyn AudioSource + Send>;
/// The sink a call's media plays into.
pub type Sink = Box<dyn AudioSink + Send>;

/// Work for a call's media thread ([`CallAudio::on_media_thread`]): it may replace the
/// source or the sink (a device switched mid-call is opened, and the old one closed, on the
/// thread that uses them). A new source or sink must run at the codec's rate. Returns true
/// when it replaced the source (one that had ended is read again).
pub type MediaTask = Box<dyn FnOnce(&mut Source, &mut Sink) -> bool + Send>;

/// Settings of a call's media.
#[derive(Debug, Clone, Default)]
pub struct CallAudioConfig {
    /// Encoder and adaptation.
    pub sender: SenderConfig,
    /// Decoder and jitter buffer.
    pub receiver: ReceiverConfig,
    /// Echo cancellation, noise suppression and gain control of captured audio (default
    /// off: a file or an application's PCM needs none of it; a client turns it on for a
    /// microphone).
    pub processing: VoiceProcessing,
}

/// What a call's media did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallAudioStats {
    /// The sending side.
    pub sender: SenderStats,
    /// The receiving side (jitter buffer, concealment, quality with an estimated MOS).
    pub receiver: ReceiverStats,
    /// Frames handed to the call layer that it could not send.
    pub send_failures: u64,
    /// The voice processing that runs.
    pub processing: VoiceProcessing,
    /// What the echo canceller measured.
    pub echo: ProcessingStats,
}

struct Shared {
    receiver: Mutex<MediaReceiver>,
    report: Mutex<Option<PeerReport>>,
    running: AtomicBool,
    paused: AtomicBool,
    stats: Mutex<CallAudioStats>,
    tasks: Mutex<Vec<MediaTask>>,
    /// A new voice processor for the media thread to use (built by the thread that asked).
    processing: Mutex<Option<VoiceProcessor>>,
    /// The voice processing asked for last.
    chosen: Mutex<VoiceProcessing>,
    /// The capture and playout rates, Hz.
    rates: (u32, u32),
}

/// The media of one call. See the [module documentation](self).
pub struct CallAudio {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CallAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallAudio").finish_non_exhaustive()
    }
}

impl CallAudio {
    /// Start the media thread: frames from `source` go to `send`, received frames to `sink`.
    /// Both must run at the codec's sample rate (16 kHz by default). `send` returns false
    /// when the frame could not be sent (counted).
    pub fn start(
        cfg: CallAudioConfig,
        mut source: Source,
        mut sink: Sink,
        mut send: FrameSender,
    ) -> Result<Self, CallAudioError> {
        let in_rate = cfg.sender.codec.rate.hz();
        if source.sample_rate() != in_rate {
            return Err(CallAudioError::Rate {
                what: "source",
                got: source.sample_rate(),
                want: in_rate,
            });
        }
        let mut sender = MediaSender::new(cfg.sender)?;
        let receiver = MediaReceiver::new(cfg.receiver)?;
        let out_rate = receiver.rate().hz();
        if sink.sample_rate() != out_rate {
            return Err(CallAudioError::Rate {
                what: "sink",
                got: sink.sample_rate(),
                want: out_rate,
            });
        }
        let shared = Arc::new(Shared {
            receiver: Mutex::new(receiver),
            report: Mutex::new(None),
            running: AtomicBool::new(true),
            paused: AtomicBool::new(false),
            stats: Mutex::new(CallAudioStats {
                processing: cfg.processing,
                ..CallAudioStats::default()
            }),
            tasks: Mutex::new(Vec::new()),
            processing: Mutex::new(None),
            chosen: Mutex::new(cfg.processing),
            rates: (in_rate, out_rate),
        });
        let mut processor = VoiceProcessor::new(cfg.processing, in_rate, out_rate)?;
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("natter-media".into())
            .spawn(move || {
                let mut pcm = Vec::new();
                let mut play = Vec::new();
                let mut frame = Vec::new();
                let mut ended = false;
                let mut next = Instant::now();
                let mut failures = 0u64;
                while sh.running.load(Ordering::SeqCst) {
                    let tasks = std::mem::take(&mut *lock(&sh.tasks));
                    for task in tasks {
                        if task(&mut source, &mut sink) {
                            // A new source: what it captured while being opened is old.
                            ended = false;
                            source.discard_backlog(sender.frame_samples());
                        }
                    }
                    if let Some(new) = lock(&sh.processing).take() {
                        processor = new;
                    }
                    if let Some(r) = lock(&sh.report).take() {
                        let due = (1000 / sender.plan().frame.ms().max(1)).max(1) as u16;
                        let _ = sender.on_report(&r.as_receiver_report(due));
                    }
                    let n = sender.frame_samples();
                    // Play first: what the speaker plays is the echo canceller's reference
                    // for the microphone's frame that follows. As much as is captured: the
                    // same duration at the output rate.
                    let period = Duration::from_secs_f64(n as f64 / f64::from(in_rate));
                    let out_n = (f64::from(out_rate) * period.as_secs_f64()).round() as usize;
                    play.resize(out_n, 0);
                    let now = Instant::now();
                    // On hold nothing is received: the sink is told it is silence, not audio
                    // (an application pulling PCM gets no samples counted as real).
                    let held = sh.paused.load(Ordering::SeqCst);
                    let rstats = {
                        let mut rx = lock(&sh.receiver);
                        if !held {
                            rx.pull(now, &mut play);
                        }
                        rx.stats()
                    };
                    let _ = if held {
                        play.fill(0);
                        sink.write_silence(play.len())
                    } else {
                        sink.write_frame(&play)
                    };
                    processor.render(&play);
                    pcm.resize(n, 0);
                    if !ended {
                        match source.read_frame(&mut pcm) {
                            Ok(SourceRead::Frame) => {}
                            Ok(SourceRead::Pending) => pcm.fill(0),
                            Ok(SourceRead::Ended) | Err(_) => {
                                ended = true;
                                pcm.fill(0);
                            }
                        }
                    } else {
                        pcm.fill(0);
                    }
                    processor.capture(&mut pcm);
                    if !held {
                        if let Ok(true) = sender.encode(&pcm, &mut frame) {
                            if !send(&frame) {
                                failures += 1;
                            }
                        }
                    }
                    {
                        let mut st = lock(&sh.stats);
                        st.sender = sender.stats();
                        st.receiver = rstats;
                        st.send_failures = failures;
                        st.processing = processor.config();
                        st.echo = processor.stats();
                    }
                    next += period;
                    // Fallen behind (a slow device, a stalled thread): start the clock again
                    // rather than sending a burst of frames to catch up.
                    let now = Instant::now();
                    if now > next + period * 2 {
                        next = now;
                        // What piled up meanwhile would stay as added delay.
                        source.discard_backlog(n);
                    }
                    std::thread::sleep(next.saturating_duration_since(now));
                }
                let _ = sink.finish();
            })
            .map_err(CallAudioError::Thread)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// A media frame of the call arrived (any thread).
    pub fn receive(&self, frame: &[u8]) {
        let _ = lock(&self.shared.receiver).receive(Instant::now(), frame);
    }

    /// The call layer's latest figures of this side's media at the peer (feeds FEC,
    /// redundancy, bitrate and congestion adaptation, and the receiver's MOS estimate).
    pub fn on_report(&self, report: &PeerReport) {
        *lock(&self.shared.report) = Some(*report);
        let rtt = report.rtt;
        if let Some(rtt) = rtt {
            lock(&self.shared.receiver).set_rtt(rtt);
        }
    }

    /// Hold (`true`) or resume the call's media: while held nothing is sent, nothing is
    /// played (the sink gets [`AudioSink::write_silence`]) and the receiver knows the silence
    /// from the peer is on purpose ([`MediaReceiver::set_held`]): not loss, not delay, and
    /// not in the MOS. Call it whenever either side holds or resumes.
    pub fn set_paused(&self, paused: bool) {
        lock(&self.shared.receiver).set_held(paused, Instant::now());
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    /// Change the voice processing of captured audio from the next frame on (any thread; the
    /// new processor is built on it, not on the media thread). A change starts the echo
    /// canceller learning the room again (about a second); asking for what runs already
    /// changes nothing.
    pub fn set_processing(&self, processing: VoiceProcessing) {
        let mut chosen = lock(&self.shared.chosen);
        if *chosen == processing {
            return;
        }
        let (capture, render) = self.shared.rates;
        // The rates were taken when the media started, so this cannot fail.
        if let Ok(p) = VoiceProcessor::new(processing, capture, render) {
            *lock(&self.shared.processing) = Some(p);
            *chosen = processing;
        }
    }

    /// Run `task` on the media thread before its next frame (within one frame period, 20 ms);
    /// tasks that are still queued when the media stops are dropped without running.
    pub fn on_media_thread(&self, task: MediaTask) {
        lock(&self.shared.tasks).push(task);
    }

    /// What the media did so far.
    pub fn stats(&self) -> CallAudioStats {
        *lock(&self.shared.stats)
    }

    /// Stop the media thread (the sink is finished: a WAV file is complete) and return the
    /// final counters.
    pub fn stop(mut self) -> CallAudioStats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.shared.running.store(false, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CallAudio {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data is counters
/// and codec state that stay usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::PeerReport;

    #[test]
    fn a_peer_report_becomes_a_second_of_frames_of_the_current_size() {
        let p = PeerReport {
            loss: 0.2,
            loss_run: Some(3.0),
            queue_ms: Some(80.0),
            recv_bps: Some(24_000.0),
            jitter_ms: 4.0,
            rtt: None,
        };
        // 60 ms frames: 16 due in a second, 3 of them lost, in runs of 3.
        let r = p.as_receiver_report(16);
        assert_eq!((r.frames, r.lost, r.mean_burst), (16, 3, 3.0));
        assert_eq!((r.queue_ms, r.recv_bps, r.jitter_ms), (80.0, 24_000.0, 4.0));
        // Without loss, no runs; an unknown or broken run length reads as random loss.
        assert_eq!(PeerReport::default().as_receiver_report(50).mean_burst, 0.0);
        let broken = PeerReport {
            loss: 0.1,
            loss_run: Some(f64::NAN),
            ..PeerReport::default()
        };
        assert_eq!(broken.as_receiver_report(50).mean_burst, 1.0);
        assert_eq!(broken.as_receiver_report(50).recv_bps, 0.0);
    }
}
