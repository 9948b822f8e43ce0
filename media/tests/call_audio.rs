//! A call's media thread end to end in-process: two `CallAudio`s feeding each other.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_media::audio::pcm::{playback_channel, PlaybackWriter};
use natter_media::audio::synth::Tone;
use natter_media::audio::{AudioError, AudioSink};
use natter_media::call::{CallAudio, CallAudioConfig, CallAudioError, PeerReport};

/// Keeps what it is given.
struct Collect(Arc<Mutex<Vec<i16>>>);

impl AudioSink for Collect {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        self.0.lock().unwrap().extend_from_slice(frame);
        Ok(())
    }
}

type Slot = Arc<Mutex<Option<Arc<CallAudio>>>>;

fn side(freq: f64, peer: Slot, heard: Arc<Mutex<Vec<i16>>>) -> Arc<CallAudio> {
    let send = Box::new(move |frame: &[u8]| {
        if let Some(p) = peer.lock().unwrap().as_ref() {
            p.receive(frame);
        }
        true
    });
    Arc::new(
        CallAudio::start(
            CallAudioConfig::default(),
            Box::new(Tone::new(16_000, freq, 0.3)),
            Box::new(Collect(heard)),
            send,
        )
        .unwrap(),
    )
}

#[test]
fn two_sides_hear_each_other() {
    let (to_a, to_b): (Slot, Slot) = Default::default();
    let (heard_a, heard_b) = (Arc::default(), Arc::default());
    let a = side(440.0, to_b.clone(), Arc::clone(&heard_a));
    let b = side(660.0, to_a.clone(), Arc::clone(&heard_b));
    *to_a.lock().unwrap() = Some(a.clone());
    *to_b.lock().unwrap() = Some(b.clone());
    std::thread::sleep(Duration::from_millis(600));
    a.on_report(&PeerReport {
        loss: 0.1,
        jitter_ms: 5.0,
        rtt: Some(Duration::from_millis(40)),
        ..PeerReport::default()
    });
    std::thread::sleep(Duration::from_millis(400));
    *to_a.lock().unwrap() = None;
    *to_b.lock().unwrap() = None;
    let (sa, sb) = (
        Arc::try_unwrap(a).unwrap().stop(),
        Arc::try_unwrap(b).unwrap().stop(),
    );
    for (stats, heard) in [(sa, heard_a), (sb, heard_b)] {
        assert!(stats.sender.sent >= 40, "{stats:?}");
        assert!(stats.receiver.jitter.received >= 40, "{stats:?}");
        let heard = heard.lock().unwrap();
        let loud = heard.iter().filter(|s| s.unsigned_abs() > 3000).count();
        assert!(loud > 1000, "the tone came through: {loud} loud samples");
    }
    // The 10 % loss report turned on loss protection at A's sender.
    assert!(
        sa.sender.fec_frames + sa.sender.red_blocks > 0,
        "{:?}",
        sa.sender
    );
}

#[test]
fn a_source_at_another_rate_is_refused() {
    let r = CallAudio::start(
        CallAudioConfig::default(),
        Box::new(Tone::new(48_000, 440.0, 0.3)),
        Box::new(Collect(Arc::default())),
        Box::new(|_: &[u8]| true),
    );
    assert!(matches!(
        r,
        Err(CallAudioError::Rate {
            what: "source",
            got: 48_000,
            want: 16_000
        })
    ));
}

/// The application's playback queue, telling the test what the media thread wrote into it.
struct Tell(PlaybackWriter, mpsc::Sender<bool>);

impl AudioSink for Tell {
    fn sample_rate(&self) -> u32 {
        16_000
    }
    fn write_frame(&mut self, frame: &[i16]) -> Result<(), AudioError> {
        self.0.write_frame(frame)?;
        let _ = self.1.send(false);
        Ok(())
    }
    fn write_silence(&mut self, samples: usize) -> Result<(), AudioError> {
        self.0.write_silence(samples)?;
        let _ = self.1.send(true);
        Ok(())
    }
}

#[test]
fn a_held_call_gives_the_application_no_samples() {
    let (writer, puller) = playback_channel(16_000, 16_000);
    let (tx, rx) = mpsc::channel();
    // The peer's tone, looped back: the receiver has real audio to play until the hold.
    let slot: Slot = Arc::default();
    let peer = slot.clone();
    let send = Box::new(move |frame: &[u8]| {
        if let Some(p) = peer.lock().unwrap().as_ref() {
            p.receive(frame);
        }
        true
    });
    let call = Arc::new(
        CallAudio::start(
            CallAudioConfig::default(),
            Box::new(Tone::new(16_000, 440.0, 0.3)),
            Box::new(Tell(writer, tx)),
            send,
        )
        .unwrap(),
    );
    *slot.lock().unwrap() = Some(call.clone());
    // A safety net only: every wait ends as soon as the media thread writes (20 ms).
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("media thread stalled")
    };
    for _ in 0..25 {
        next();
    }
    call.set_paused(true);
    // The first write that saw the hold, then drain what was queued before it.
    while !next() {}
    let mut out = vec![0i16; 16_000];
    puller.pull(&mut out);
    for _ in 0..10 {
        assert!(next(), "audio written to the sink while held");
    }
    let real = puller.pull(&mut out);
    assert_eq!(real, 0, "the application was handed real samples on hold");
    assert!(out.iter().all(|&s| s == 0));
    assert!(puller.stats().held >= 10 * 320, "{:?}", puller.stats());
    let stats = call.stats();
    assert!(stats.receiver.held);
    assert_eq!(stats.receiver.jitter.lost_before_recovery, 0, "{stats:?}");
    // Resumed: audio again.
    call.set_paused(false);
    while next() {}
    *slot.lock().unwrap() = None;
    drop(rx);
    let stats = Arc::try_unwrap(call).unwrap().stop();
    assert!(!stats.receiver.held);
}
