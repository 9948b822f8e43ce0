//! Audio input and output behind two small traits, so an application can bring its own.
//!
//! Everything here moves **mono 16-bit PCM at one sample rate** (the codec's, unless a
//! resampler sits in between) in whole frames:
//!
//! * [`AudioSource`]: capture. [`wav::WavSource`], [`synth::Tone`], [`synth::Silence`],
//!   [`pcm::CaptureReader`] (frames an application pushed), [`device::CaptureDevice`] (cpal).
//! * [`AudioSink`]: playback. [`wav::WavSink`], [`pcm::PlaybackWriter`] (frames an application
//!   pulls), [`device::PlaybackDevice`] (cpal).
//!
//! Sources and sinks are owned and driven by one thread, the *media thread* (the one that
//! runs the encoder and the jitter buffer). Devices and the push/pull interface hand samples
//! across threads through [`pcm`]'s queues; see there for which thread does what.

#[cfg(feature = "devices")]
pub mod device;
#[cfg(all(target_os = "linux", feature = "devices"))]
pub mod fifo;
pub mod pcm;
pub mod processing;
pub mod resample;
pub mod synth;
pub mod wav;

/// Why audio could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// A WAV file could not be read or written.
    #[error("WAV: {0}")]
    Wav(#[from] hound::Error),
    /// A WAV file in a format the engine does not take.
    #[error("unsupported WAV format: {0}")]
    UnsupportedFormat(String),
    /// No audio device of the requested kind exists (no sound card, no server).
    #[error("no {0} device available")]
    NoDevice(&'static str),
    /// No device has the requested name.
    #[error("no {kind} device named {name:?}")]
    DeviceNotFound {
        /// "input" or "output".
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// The audio backend failed.
    #[error("audio backend: {0}")]
    Backend(String),
    /// The frame does not have the size this source or sink works with.
    #[error("frame of {got} samples, expected {expected}")]
    FrameSize {
        /// Samples given.
        got: usize,
        /// Samples expected.
        expected: usize,
    },
}

/// What a call to [`AudioSource::read_frame`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRead {
    /// The frame was filled.
    Frame,
    /// Not enough samples yet (a live source); try again later.
    Pending,
    /// The source has ended (end of file); the frame is untouched.
    Ended,
}

/// A source of mono PCM frames.
pub trait AudioSource {
    /// Samples per second.
    fn sample_rate(&self) -> u32;
    /// Fill `frame` entirely with the next samples.
    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError>;
    /// Drop what a live source has queued beyond `keep` samples (after a stall, or when it
    /// just started), so the call does not carry that backlog as added delay. The default
    /// does nothing (files, generators: they have no backlog).
    fn discard_backlog(&mut self, keep: usize) {
        let _ = keep;
    }
}

/// A sink for mono PCM frames.
pub trait AudioSink {
    /// Samples per second.
    fn sample_rate(&self) -> u32;
    /// Take the next samples.
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError>;
    /// `samples` of silence that were not received audio (the call is on hold). The default
    /// writes zeros, so a file keeps the call's timeline; a queue an application pulls from
    /// queues nothing instead, so its pulls report no real samples.
    fn write_silence(&mut self, samples: usize) -> Result<(), AudioError> {
        self.write_frame(&vec![0; samples])
    }
    /// Flush and close (files); the default does nothing.
    fn finish(&mut self) -> Result<(), AudioError> {
        Ok(())
    }
}

impl<T: AudioSource + ?Sized> AudioSource for Box<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        (**self).read_frame(frame)
    }
}

impl<T: AudioSink + ?Sized> AudioSink for Box<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        (**self).write_frame(frame)
    }
    fn write_silence(&mut self, samples: usize) -> Result<(), AudioError> {
        (**self).write_silence(samples)
    }
    fn finish(&mut self) -> Result<(), AudioError> {
        (**self).finish()
    }
}
