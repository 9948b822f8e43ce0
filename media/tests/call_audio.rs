//! A call's media thread end to end in-process: two `CallAudio`s feeding each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_media::audio::synth::Tone;
use natter_media::audio::{AudioError, AudioSink};
use natter_media::call::{CallAudio, CallAudioConfig, CallAudioError};

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
    a.on_report(0.1, 5.0, Some(Duration::from_millis(40)));
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
