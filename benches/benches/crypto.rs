//! Seal and open of a 160-byte media payload (a 20 ms wideband Opus frame is 40-80 bytes;
//! 160 bytes covers fullband and redundancy), and a full XX handshake for scale.
//!
//! `cargo bench -p natter-benches --bench crypto`. The "seal+open" figure is one pair on one
//! core: pairs per second per core = 1 / time. `forged_reset/N` is what a forged session reset
//! (a flood anyone can send) costs an endpoint holding N sessions: the same for 1 and 3,000
//! when the lookup does not scan the sessions.

use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use natter_core::crypto::Session;
use natter_core::sansio::Machine;
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

/// A forged reset at an endpoint with `sessions` sessions (a super node holds thousands).
fn forged_reset(c: &mut Criterion) {
    let net = TestNetwork::new(2);
    let now = Instant::now();
    let hub_addr: std::net::SocketAddr = "198.18.0.1:1".parse().unwrap();
    let mut g = c.benchmark_group("forged_reset");
    for sessions in [1u32, 3000] {
        let mut hub = net.endpoint("hub", now);
        for i in 0..sessions {
            let addr =
                std::net::SocketAddr::from(([198, 18, 1 + (i / 250) as u8, 1], 1 + i as u16));
            let mut client = net.endpoint(&format!("user{i:04}"), now);
            client
                .connect(now, natter_core::sansio::Destination::Udp(hub_addr), None)
                .unwrap();
            pump(&mut client, addr, &mut hub, hub_addr, now);
        }
        assert_eq!(hub.connections().count(), sessions as usize);
        let mut out = BytesMut::new();
        Packet::Reset {
            index: SessionIndex(0xDEAD_BEEF),
            token: [0x5A; natter_core::crypto::RESET_TOKEN_LEN],
        }
        .encode(&mut out);
        let source = "198.18.99.1:9".parse().unwrap();
        g.bench_function(sessions.to_string(), |b| {
            b.iter(|| {
                hub.handle_input(
                    now,
                    natter_core::sansio::Input::Datagram {
                        source,
                        local: hub_addr,
                        data: &out,
                    },
                )
            })
        });
        assert!(hub.stats().dropped_reset > 0);
    }
    g.finish();
}

criterion_group!(benches, raw::aead, seal_open, handshake, forged_reset);
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
