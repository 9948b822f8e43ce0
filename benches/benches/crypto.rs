//! Seal and open of a 160-byte media payload (a 20 ms wideband Opus frame is 40-80 bytes;
//! 160 bytes covers fullband and redundancy), and a full XX handshake for scale.
//!
//! `cargo bench -p natter-benches --bench crypto`. The "seal+open" figure is one pair on one
//! core: pairs per second per core = 1 / time.

use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use natter_core::crypto::Session;
use natter_core::testkit::{pump, TestNetwork};
use natter_core::wire::packet::{Channel, Packet, SessionIndex};

const PAYLOAD: usize = 160;

fn pair(now: Instant) -> (Session, Session) {
    (
        Session::new(SessionIndex(1), SessionIndex(2), [7; 32], [9; 32], now),
        Session::new(SessionIndex(2), SessionIndex(1), [9; 32], [7; 32], now),
    )
}

fn seal_open(c: &mut Criterion) {
    let now = Instant::now();
    let payload = [0xA5u8; PAYLOAD];
    let mut g = c.benchmark_group("media_160B");
    g.throughput(Throughput::Elements(1));

    let (mut a, _) = pair(now);
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("seal", |b| {
        b.iter(|| {
            out.clear();
            a.seal(now, Channel::Media, &payload, &mut out).unwrap();
        })
    });

    let (mut a, mut z) = pair(now);
    let mut plain = Vec::with_capacity(256);
    g.bench_function("seal+open", |b| {
        b.iter(|| {
            out.clear();
            a.seal(now, Channel::Media, &payload, &mut out).unwrap();
            let Ok(Packet::Data { header, ciphertext }) = Packet::decode(&out) else {
                unreachable!()
            };
            z.open(&header, ciphertext, &mut plain).unwrap();
        })
    });
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let net = TestNetwork::new(1);
    let a_addr = "198.18.0.1:1".parse().unwrap();
    let b_addr = "198.18.0.2:1".parse().unwrap();
    c.bench_function("xx_handshake_both_sides", |bench| {
        bench.iter(|| {
            let now = Instant::now();
            let mut a = net.endpoint("alice", now);
            let mut b = net.endpoint("bob", now);
            a.connect(now, natter_core::sansio::Destination::Udp(b_addr), None)
                .unwrap();
            pump(&mut a, a_addr, &mut b, b_addr, now)
        })
    });
}

criterion_group!(benches, raw::aead, seal_open, handshake);
criterion_main!(benches);

mod raw {
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
    use criterion::Criterion;

    /// The AEAD alone, as the reference the session's overhead is measured against.
    pub fn aead(c: &mut Criterion) {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&[7; 32]));
        let mut buf = [0xA5u8; super::PAYLOAD];
        let mut n = 0u64;
        c.bench_function("raw_aead_seal_160B", |b| {
            b.iter(|| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_le_bytes());
                cipher
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[1; 14], &mut buf)
                    .unwrap()
            })
        });
    }
}
