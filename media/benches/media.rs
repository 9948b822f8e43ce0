//! Per-frame cost of encoding, decoding and the jitter buffer (20 ms wideband frames).
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use natter_media::audio::synth::speechlike;
use natter_media::codec::{CodecConfig, OpusDecoder, OpusEncoder, SampleRate, MAX_PACKET};
use natter_media::frame::MediaFrame;
use natter_media::jitter::JitterBuffer;

fn bench(c: &mut Criterion) {
    let speech = speechlike(16_000, 2.0);
    let frames: Vec<&[i16]> = speech.chunks_exact(320).collect();
    let mut enc = OpusEncoder::new(&CodecConfig::default()).unwrap();
    let mut packet = [0u8; MAX_PACKET];
    let mut i = 0;
    c.bench_function("opus_encode_20ms_wb_16k", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            enc.encode(frames[i], &mut packet).unwrap()
        })
    });
    let packets: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let n = enc.encode(f, &mut packet).unwrap();
            packet[..n].to_vec()
        })
        .collect();
    let mut dec = OpusDecoder::new(SampleRate::Wideband).unwrap();
    let mut pcm = [0i16; 320];
    c.bench_function("opus_decode_20ms_wb", |b| {
        b.iter(|| {
            i = (i + 1) % packets.len();
            dec.decode(&packets[i], &mut pcm).unwrap()
        })
    });
    c.bench_function("opus_conceal_20ms_wb", |b| {
        b.iter(|| dec.conceal(&mut pcm).unwrap())
    });
    // One insert and one pop per 20 ms frame, in steady state.
    let t0 = Instant::now();
    let mut jb = JitterBuffer::default();
    let mut seq: u16 = 0;
    c.bench_function("jitter_buffer_insert_pop_per_frame", |b| {
        b.iter(|| {
            let now = t0 + Duration::from_millis(20 * u64::from(seq));
            let p = &packets[usize::from(seq) % packets.len()];
            let f = MediaFrame::new(seq, seq.wrapping_mul(8), p);
            jb.insert(now, &f);
            seq = seq.wrapping_add(1);
            jb.pop(now + Duration::from_millis(5))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
