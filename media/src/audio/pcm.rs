//! The push/pull PCM interface, for applications that own their audio (a game engine, a
//! platform audio API, a test harness), and the queues behind the cpal devices.
//!
//! ```text
//!  application audio thread                      media thread (encoder, jitter buffer)
//!  CapturePusher::push(&[i16])  --- queue --->  CaptureReader   (an AudioSource)
//!  PlaybackPuller::pull(&mut [i16]) <- queue --  PlaybackWriter  (an AudioSink)
//! ```
//!
//! **Threads.** Each pair shares one bounded queue behind a mutex held only to copy samples
//! (microseconds), so both ends are `Send + Sync` and may be used from any thread; the
//! intended owner of `CapturePusher` and `PlaybackPuller` is the application's audio callback
//! thread, and of `CaptureReader` and `PlaybackWriter` the media thread. Neither end ever
//! waits for the other: a full queue drops its *oldest* samples (bounding latency), an empty
//! playback queue plays silence; both are counted in [`QueueStats`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{AudioError, AudioSink, AudioSource, SourceRead};

/// What a queue has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Samples that went through.
    pub samples: u64,
    /// Samples dropped because the queue was full.
    pub dropped: u64,
    /// Samples of silence played because the queue was empty.
    pub underrun: u64,
    /// Samples of silence the engine did not queue because nothing was received on purpose
    /// (the call on hold, [`AudioSink::write_silence`]): the puller plays silence there and
    /// reports no real samples (it counts them in `underrun`).
    pub held: u64,
}

#[derive(Debug)]
struct Queue {
    samples: VecDeque<i16>,
    capacity: usize,
    stats: QueueStats,
}

#[derive(Debug, Clone)]
struct Shared {
    rate: u32,
    queue: Arc<Mutex<Queue>>,
}

impl Shared {
    fn new(rate: u32, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            rate,
            queue: Arc::new(Mutex::new(Queue {
                samples: VecDeque::with_capacity(capacity),
                capacity,
                stats: QueueStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue inconsistent (only copies).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, samples: &[i16]) {
        let mut q = self.lock();
        let overflow = (q.samples.len() + samples.len()).saturating_sub(q.capacity);
        let from_queue = overflow.min(q.samples.len());
        q.samples.drain(..from_queue);
        let skip = overflow - from_queue;
        q.samples.extend(&samples[skip..]);
        q.stats.dropped += overflow as u64;
        q.stats.samples += (samples.len() - skip) as u64;
    }

    fn stats(&self) -> QueueStats {
        self.lock().stats
    }

    fn buffered(&self) -> usize {
        self.lock().samples.len()
    }
}

/// Create the capture pair: the application pushes, the engine reads whole frames.
/// `capacity` is in samples (e.g. 200 ms worth).
pub fn capture_channel(rate: u32, capacity: usize) -> (CapturePusher, CaptureReader) {
    let shared = Shared::new(rate, capacity);
    (CapturePusher(shared.clone()), CaptureReader(shared))
}

/// Create the playback pair: the engine writes frames, the application pulls any amount.
pub fn playback_channel(rate: u32, capacity: usize) -> (PlaybackWriter, PlaybackPuller) {
    let shared = Shared::new(rate, capacity);
    (PlaybackWriter(shared.clone()), PlaybackPuller(shared))
}

/// The application's end of capture: push microphone samples (mono, at the channel's rate).
#[derive(Debug, Clone)]
pub struct CapturePusher(Shared);

impl CapturePusher {
    /// Queue captured samples (any count). Never blocks beyond the copy.
    pub fn push(&self, samples: &[i16]) {
        self.0.push(samples);
    }

    /// Samples waiting to be read.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.0.stats()
    }
}

/// The engine's end of capture, an [`AudioSource`] that is `Pending` until a whole frame is
/// queued.
#[derive(Debug, Clone)]
pub struct CaptureReader(Shared);

impl AudioSource for CaptureReader {
    fn sample_rate(&self) -> u32 {
        self.0.rate
    }

    fn read_frame(&mut self, frame: &mut [i16]) -> Result<SourceRead, AudioError> {
        let mut q = self.0.lock();
        if q.samples.len() < frame.len() {
            return Ok(SourceRead::Pending);
        }
        let n = frame.len();
        for (d, s) in frame.iter_mut().zip(q.samples.drain(..n)) {
            *d = s;
        }
        Ok(SourceRead::Frame)
    }

    fn discard_backlog(&mut self, keep: usize) {
        let mut q = self.0.lock();
        let excess = q.samples.len().saturating_sub(keep);
        q.samples.drain(..excess);
    }
}

/// The engine's end of playback, an [`AudioSink`].
#[derive(Debug, Clone)]
pub struct PlaybackWriter(Shared);

impl PlaybackWriter {
    /// Samples queued and not yet pulled (the playback latency this queue adds).
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }
}

impl AudioSink for PlaybackWriter {
    fn sample_rate(&self) -> u32 {
        self.0.rate
    }

    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        self.0.push(frame);
        Ok(())
    }

    fn write_silence(&mut self, samples: usize) -> Result<(), AudioError> {
        self.0.lock().stats.held += samples as u64;
        Ok(())
    }
}

/// The application's end of playback: pull samples for the speaker.
#[derive(Debug, Clone)]
pub struct PlaybackPuller(Shared);

impl PlaybackPuller {
    /// Fill `out` with the next samples, silence where none are queued; returns how many
    /// real samples were available.
    pub fn pull(&self, out: &mut [i16]) -> usize {
        let mut q = self.0.lock();
        let n = q.samples.len().min(out.len());
        for (d, s) in out.iter_mut().zip(q.samples.drain(..n)) {
            *d = s;
        }
        out[n..].fill(0);
        q.stats.underrun += (out.len() - n) as u64;
        n
    }

    /// Counters.
    pub fn stats(&self) -> QueueStats {
        self.0.stats()
    }

    /// The sample rate.
    pub fn sample_rate(&self) -> u32 {
        self.0.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_dropped_down_to_what_is_kept_newest_first() {
        let (pusher, mut reader) = capture_channel(16_000, 3200);
        let samples: Vec<i16> = (0..1000).collect();
        pusher.push(&samples);
        reader.discard_backlog(320);
        let mut frame = [0i16; 320];
        assert_eq!(reader.read_frame(&mut frame).unwrap(), SourceRead::Frame);
        assert_eq!(frame[0], 680, "the newest 320 samples are kept");
        assert_eq!(reader.read_frame(&mut frame).unwrap(), SourceRead::Pending);
    }

    #[test]
    fn capture_frames_cross_threads() {
        let (pusher, mut reader) = capture_channel(16_000, 3200);
        let t = std::thread::spawn(move || {
            for i in 0..10i16 {
                pusher.push(&[i; 160]);
            }
            pusher
        });
        let pusher = t.join().unwrap();
        let mut frame = [0i16; 320];
        let mut frames = Vec::new();
        while reader.read_frame(&mut frame).unwrap() == SourceRead::Frame {
            frames.push(frame);
        }
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[2][0], 4);
        assert_eq!(frames[2][319], 5);
        assert_eq!(pusher.stats().samples, 1600);
        pusher.push(&[1; 100]);
        assert_eq!(reader.read_frame(&mut frame).unwrap(), SourceRead::Pending);
    }

    #[test]
    fn overflow_drops_oldest_and_underrun_plays_silence() {
        let (mut writer, puller) = playback_channel(16_000, 500);
        writer.write_frame(&[1; 320]).unwrap();
        writer.write_frame(&[2; 320]).unwrap();
        assert_eq!(writer.buffered(), 500);
        let mut out = [9i16; 600];
        assert_eq!(puller.pull(&mut out), 500);
        assert_eq!(out[0], 1);
        assert_eq!(out[179], 1);
        assert_eq!(out[180], 2);
        assert!(out[500..].iter().all(|&s| s == 0));
        let s = puller.stats();
        assert_eq!((s.dropped, s.underrun), (140, 100));
    }

    #[test]
    fn ends_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CapturePusher>();
        check::<CaptureReader>();
        check::<PlaybackWriter>();
        check::<PlaybackPuller>();
    }
}
