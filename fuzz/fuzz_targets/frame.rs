//! Stream framing: arbitrary bytes split at an arbitrary point; never panics, never buffers
//! more than the input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use natter_core::wire::frame::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut d = FrameDecoder::new(1200);
    for part in [&data[..split], &data[split..]] {
        d.push(part);
        while let Ok(Some(f)) = d.next_frame() {
            assert!(!f.is_empty() && f.len() <= 1200);
        }
        assert!(d.buffered() <= data.len());
    }
});
