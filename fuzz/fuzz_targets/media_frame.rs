//! Media frames: arbitrary bytes never panic the decoder; a decoded frame re-encodes to the
//! same bytes; frames (valid or not) fed to a jitter buffer at arbitrary times never panic it.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use natter_media::frame::MediaFrame;
use natter_media::jitter::JitterBuffer;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = MediaFrame::decode(data) {
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(out, data);
        assert_eq!(f.encoded_len(), data.len());
    }
    // The input as a stream: [time step ms][len][frame bytes]...
    let t0 = Instant::now();
    let mut jb = JitterBuffer::default();
    let mut now = t0;
    let mut rest = data;
    while let [step, len, tail @ ..] = rest {
        now += Duration::from_millis(u64::from(*step));
        let n = usize::from(*len).min(tail.len());
        let (frame, tail) = tail.split_at(n);
        if let Ok(f) = MediaFrame::decode(frame) {
            jb.insert(now, &f);
        }
        let p = jb.pop(now);
        assert!(p.ticks() >= 1 && p.ticks() <= 48);
        rest = tail;
    }
});
