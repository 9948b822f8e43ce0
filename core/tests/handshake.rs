//! Handshake and endpoint tests: every rejection case, IK and XX, replays, low-order keys.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::crypto::{Authority, CertError, UnixTime, UserName};
use natter_core::crypto::{Handshake, HandshakeError, InitMessage, LocalIdentity, Step};
use natter_core::endpoint::{CloseCause, Endpoint, EndpointEvent};
use natter_core::rng::Rng;
use natter_core::sansio::{Destination, Input, Machine};
use natter_core::testkit::{pump, TestNetwork, TEST_WALL};
use natter_core::wire::packet::{Packet, Pattern, SessionIndex};

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 4000))
}

/// Run a full handshake between two identities; returns the initiator's and responder's
/// outcome.
fn handshake(
    a: LocalIdentity,
    b: LocalIdentity,
    ik: bool,
    wall: UnixTime,
) -> Result<(), HandshakeError> {
    let now = Instant::now();
    let mut rng = Rng::from_seed(3);
    let rs = ik.then(|| b.device.dh_public());
    let (mut init, m1) = Handshake::initiate(a, rs, 1, SessionIndex(1), &mut rng)?;
    let Packet::HandshakeInit {
        pattern,
        sender,
        noise,
    } = Packet::decode(&m1).unwrap()
    else {
        panic!()
    };
    let init_msg = InitMessage {
        pattern,
        sender,
        noise,
    };
    let (mut resp, step) = Handshake::respond(b, init_msg, SessionIndex(2), &mut rng, now, wall)?;
    let m2 = match step {
        Step::Send(m) => m,
        Step::Done(Some(m), _) => m,
        Step::Done(None, _) => panic!(),
    };
    let Packet::HandshakeResponse { sender, noise, .. } = Packet::decode(&m2).unwrap() else {
        panic!()
    };
    match init.read_response(sender, noise, now, wall)? {
        Step::Done(None, est) => {
            assert!(ik);
            assert_eq!(est.session.remote_index(), SessionIndex(2));
            Ok(())
        }
        Step::Done(Some(m3), _) => {
            let Packet::HandshakeFinal { noise, .. } = Packet::decode(&m3).unwrap() else {
                panic!()
            };
            resp.read_final(noise, now, wall).map(|_| ())
        }
        Step::Send(_) => panic!("initiator never sends twice before done"),
    }
}

#[test]
fn xx_and_ik_complete() {
    let net = TestNetwork::new(1);
    handshake(net.identity("alice"), net.identity("bob"), false, TEST_WALL).unwrap();
    handshake(net.identity("alice"), net.identity("bob"), true, TEST_WALL).unwrap();
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let net = TestNetwork::new(1);
    let late = UnixTime(TEST_WALL.0 + 2 * 86_400);
    let early = UnixTime(TEST_WALL.0 - 2 * 86_400);
    for ik in [false, true] {
        assert_eq!(
            handshake(net.identity("alice"), net.identity("bob"), ik, late),
            Err(HandshakeError::Certificate(CertError::Expired))
        );
        assert_eq!(
            handshake(net.identity("alice"), net.identity("bob"), ik, early),
            Err(HandshakeError::Certificate(CertError::NotYetValid))
        );
    }
}

#[test]
fn wrong_authority_is_refused() {
    let net = TestNetwork::new(1);
    let other = TestNetwork::new(2);
    for ik in [false, true] {
        // Bob's certificate comes from an authority Alice does not trust (XX: Alice refuses
        // at message 2) and vice versa (IK: Bob refuses at message 1).
        assert_eq!(
            handshake(net.identity("alice"), other.identity("bob"), ik, TEST_WALL),
            Err(HandshakeError::Certificate(CertError::UnknownAuthority))
        );
        assert_eq!(
            handshake(other.identity("alice"), net.identity("bob"), ik, TEST_WALL),
            Err(HandshakeError::Certificate(CertError::UnknownAuthority))
        );
    }
}

#[test]
fn certificate_for_another_key_is_refused() {
    let net = TestNetwork::new(1);
    // Mallory presents Alice's (valid) certificate with her own Noise key.
    let mut mallory = net.identity("mallory");
    mallory.certificate = net.identity("alice").certificate;
    for ik in [false, true] {
        assert_eq!(
            handshake(mallory.clone(), net.identity("bob"), ik, TEST_WALL),
            Err(HandshakeError::Certificate(CertError::WrongKey))
        );
        assert_eq!(
            handshake(net.identity("bob"), mallory.clone(), false, TEST_WALL),
            Err(HandshakeError::Certificate(CertError::WrongKey))
        );
    }
}

#[test]
fn tampered_certificate_is_refused() {
    let net = TestNetwork::new(1);
    let mut bob = net.identity("bob");
    bob.certificate.not_after = UnixTime(u64::MAX);
    assert_eq!(
        handshake(net.identity("alice"), bob.clone(), false, TEST_WALL),
        Err(HandshakeError::Certificate(CertError::BadSignature))
    );
    let mut bob2 = net.identity("bob");
    bob2.certificate.user = UserName::parse("admin").unwrap();
    assert_eq!(
        handshake(net.identity("alice"), bob2, false, TEST_WALL),
        Err(HandshakeError::Certificate(CertError::BadSignature))
    );
}

#[test]
fn forged_certificate_from_own_authority_key_id_is_refused() {
    let net = TestNetwork::new(1);
    let mut rng = Rng::from_seed(99);
    let rogue = Authority::generate(&mut rng);
    let mut bob = net.identity("bob");
    let mut forged = rogue.certify(
        &bob.certificate.user,
        bob.device.dh_public(),
        bob.device.signing_public(),
        UnixTime(0),
        UnixTime(u64::MAX),
    );
    forged.authority = bob.certificate.authority;
    bob.certificate = forged;
    assert_eq!(
        handshake(net.identity("alice"), bob, false, TEST_WALL),
        Err(HandshakeError::Certificate(CertError::BadSignature))
    );
}

#[test]
fn ik_to_the_wrong_static_key_fails() {
    let net = TestNetwork::new(1);
    let alice = net.identity("alice");
    let bob = net.identity("bob");
    let carol = net.identity("carol");
    let now = Instant::now();
    let mut rng = Rng::from_seed(3);
    // Alice believes Carol's key is Bob's.
    let (_, m1) = Handshake::initiate(
        alice,
        Some(carol.device.dh_public()),
        1,
        SessionIndex(1),
        &mut rng,
    )
    .unwrap();
    let Packet::HandshakeInit {
        pattern,
        sender,
        noise,
    } = Packet::decode(&m1).unwrap()
    else {
        panic!()
    };
    let r = Handshake::respond(
        bob,
        InitMessage {
            pattern,
            sender,
            noise,
        },
        SessionIndex(2),
        &mut rng,
        now,
        TEST_WALL,
    );
    assert!(matches!(r, Err(HandshakeError::Noise(_))));
}

#[test]
fn low_order_points_are_rejected() {
    let net = TestNetwork::new(1);
    let bob = net.identity("bob");
    let now = Instant::now();
    let mut rng = Rng::from_seed(3);
    // Known low-order points on Curve25519 (the identity, a point of order 8, ...).
    let low_order: [[u8; 32]; 3] = [
        [0; 32],
        {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        },
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
    ];
    for point in low_order {
        // An XX message 1 is just the initiator's ephemeral key: forge it as a low-order point.
        let r = Handshake::respond(
            bob.clone(),
            InitMessage {
                pattern: Pattern::Xx,
                sender: SessionIndex(1),
                noise: &point,
            },
            SessionIndex(2),
            &mut rng,
            now,
            TEST_WALL,
        );
        // Message 1 only mixes the key in; the responder's "ee" DH on writing message 2 is
        // where the non-contributory result is caught.
        assert!(
            matches!(r, Err(HandshakeError::LowOrderPoint)),
            "low-order point accepted: {r:?}"
        );
        // IK: the responder's "es" DH while reading message 1 meets the forged ephemeral key
        // before anything else (the rest of the message is never decrypted).
        let mut ik = point.to_vec();
        ik.extend([0x5a; 48 + 16 + 200]);
        let r = Handshake::respond(
            bob.clone(),
            InitMessage {
                pattern: Pattern::Ik,
                sender: SessionIndex(1),
                noise: &ik,
            },
            SessionIndex(2),
            &mut rng,
            now,
            TEST_WALL,
        );
        assert!(
            matches!(r, Err(HandshakeError::LowOrderPoint)),
            "low-order IK ephemeral accepted: {r:?}"
        );
    }
}

#[test]
fn garbage_handshake_messages_are_errors() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut rng = Rng::from_seed(5);
    for len in [1usize, 31, 32, 33, 48, 96, 200, 1000] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        for pattern in [Pattern::Xx, Pattern::Ik] {
            let r = Handshake::respond(
                net.identity("bob"),
                InitMessage {
                    pattern,
                    sender: SessionIndex(1),
                    noise: &junk,
                },
                SessionIndex(2),
                &mut rng,
                now,
                TEST_WALL,
            );
            if pattern == Pattern::Ik || len != 32 {
                assert!(r.is_err(), "{pattern:?} {len}");
            }
        }
    }
}

fn connected(events: &[EndpointEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, EndpointEvent::Connected { .. }))
        .count()
}

#[test]
fn endpoints_connect_exchange_and_close() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    let conn = a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    let (ea, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert_eq!(connected(&ea), 1, "{ea:?}");
    assert_eq!(connected(&eb), 1, "{eb:?}");
    let EndpointEvent::Connected { peer, .. } = &eb[0] else {
        panic!()
    };
    assert_eq!(peer.certificate.user.as_str(), "alice");
    assert!(peer
        .capabilities
        .contains(natter_core::crypto::Capabilities::SHORT_MEDIA));
    // Media goes in the short envelope (the peer announced it reads it), control in the full.
    a.send_media(now, conn, b"frame").unwrap();
    let media = a.poll_transmit().unwrap();
    assert_eq!(media.payload.len(), 10 + 5 + 16);
    assert_eq!(media.payload[1] & 0xFE, 0x20);
    a.send(now, conn, b"hello bob").unwrap();
    let control = a.poll_transmit().unwrap();
    assert_eq!(control.payload.len(), 14 + 1 + 9 + 16);
    for t in [media, control] {
        b.handle_input(
            now,
            Input::Datagram {
                source: addr(1),
                local: addr(2),
                data: &t.payload,
            },
        );
    }
    a.ping(now, conn).unwrap();
    let (ea, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert!(eb
        .iter()
        .any(|e| matches!(e, EndpointEvent::Data { data, .. } if &data[..] == b"hello bob")));
    assert!(eb
        .iter()
        .any(|e| matches!(e, EndpointEvent::Media { data, .. } if &data[..] == b"frame")));
    assert!(ea.iter().any(|e| matches!(e, EndpointEvent::Pong { .. })));
    a.close(now, conn);
    let (_, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert!(eb.iter().any(|e| matches!(
        e,
        EndpointEvent::Closed {
            cause: CloseCause::Remote(_),
            ..
        }
    )));
}

#[test]
fn ik_connect_and_replayed_ik_initiation_is_refused() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    let bob_key = net.identity("bob").device.dh_public();
    a.connect(now, Destination::Udp(addr(2)), Some(bob_key))
        .unwrap();
    let m1 = a.poll_transmit().unwrap();
    let feed = |b: &mut Endpoint, data: &[u8]| {
        b.handle_input(
            now,
            Input::Datagram {
                source: addr(1),
                local: addr(2),
                data,
            },
        )
    };
    feed(&mut b, &m1.payload);
    // Bob's session is tentative until alice proves she holds it.
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.connections().count(), 0);
    let (ea, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert_eq!((connected(&ea), connected(&eb)), (1, 1));
    // The same message 1 again: refused, no second session, no event.
    feed(&mut b, &m1.payload);
    assert_eq!(b.poll_event(), None);
    assert_eq!(b.stats().handshake_replays, 1);
    assert_eq!(b.connections().count(), 1);
}

#[test]
fn handshake_survives_loss_by_retransmission_and_idle_sessions_time_out() {
    let net = TestNetwork::new(1);
    let t0 = Instant::now();
    let mut a = net.endpoint("alice", t0);
    let mut b = net.endpoint("bob", t0);
    a.connect(t0, Destination::Udp(addr(2)), None).unwrap();
    // Lose the first initiation.
    assert!(a.poll_transmit().is_some());
    let t1 = a.poll_timeout().unwrap();
    assert_eq!(t1, t0 + Duration::from_millis(250));
    a.handle_timeout(t1);
    let (ea, eb) = pump(&mut a, addr(1), &mut b, addr(2), t1);
    assert_eq!((connected(&ea), connected(&eb)), (1, 1));
    // Keep-alives flow after 20 s of silence, and B alone going silent kills A's session
    // after 60 s.
    let t2 = t1 + Duration::from_secs(20);
    a.handle_timeout(t2);
    let ka = a.poll_transmit().expect("keep-alive");
    assert!(
        ka.payload.len() < 40,
        "keep-alives are small: {}",
        ka.payload.len()
    );
    let t3 = t1 + Duration::from_secs(61);
    a.handle_timeout(t3);
    let ev: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
    assert!(ev.iter().any(|e| matches!(
        e,
        EndpointEvent::Closed {
            cause: CloseCause::Timeout,
            ..
        }
    )));
}

#[test]
fn connect_times_out_when_nobody_answers() {
    let net = TestNetwork::new(1);
    let mut now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let conn = a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    let mut sent = 0;
    let mut failed = false;
    for _ in 0..30 {
        while a.poll_transmit().is_some() {
            sent += 1;
        }
        if let Some(ev) = a.poll_event() {
            assert_eq!(
                ev,
                EndpointEvent::ConnectFailed {
                    conn,
                    error: natter_core::endpoint::ConnectError::Timeout
                }
            );
            failed = true;
            break;
        }
        match a.poll_timeout() {
            Some(t) => {
                now = t;
                a.handle_timeout(now);
            }
            None => break,
        }
    }
    assert!(failed);
    assert_eq!(sent, 10);
}

#[test]
fn garbage_and_unknown_sessions_are_counted_not_fatal() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    let conn = a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    pump(&mut a, addr(1), &mut b, addr(2), now);
    let mut rng = Rng::from_seed(11);
    for i in 0..2000u32 {
        let mut junk = vec![0u8; (i % 300) as usize];
        rng.fill(&mut junk);
        if i % 3 == 0 && !junk.is_empty() {
            junk[0] = 0x51; // look like a control packet
        }
        b.handle_input(
            now,
            Input::Datagram {
                source: addr(9),
                local: addr(2),
                data: &junk,
            },
        );
    }
    let s = b.stats();
    assert!(
        s.dropped_not_natter
            + s.dropped_malformed
            + s.dropped_unknown_session
            + s.handshake_failures
            > 0
    );
    a.send(now, conn, b"still works").unwrap();
    let (_, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert!(eb.iter().any(|e| matches!(e, EndpointEvent::Data { .. })));
}

#[test]
fn ik_recovers_when_the_response_is_lost() {
    let net = TestNetwork::new(1);
    let t0 = Instant::now();
    let mut a = net.endpoint("alice", t0);
    let mut b = net.endpoint("bob", t0);
    let bob_key = net.identity("bob").device.dh_public();
    let conn = a
        .connect(t0, Destination::Udp(addr(2)), Some(bob_key))
        .unwrap();
    let m1 = a.poll_transmit().unwrap();
    b.handle_input(
        t0,
        Input::Datagram {
            source: addr(1),
            local: addr(2),
            data: &m1.payload,
        },
    );
    // Bob answers, but the answer is lost; his session stays tentative and unreported.
    assert!(b.poll_transmit().is_some());
    assert_eq!(b.poll_event(), None);
    // Alice retries with a fresh initiation, which is not a replay.
    let t1 = a.poll_timeout().unwrap();
    a.handle_timeout(t1);
    let (ea, eb) = pump(&mut a, addr(1), &mut b, addr(2), t1);
    assert_eq!(connected(&ea), 1, "{ea:?}");
    assert_eq!(b.stats().handshake_replays, 0);
    // Bob reported exactly one session (the confirmed one); the orphan goes silently.
    assert_eq!(connected(&eb), 1, "{eb:?}");
    assert_eq!(b.connections().count(), 1);
    a.send(t1, conn, b"after retry").unwrap();
    let (_, eb) = pump(&mut a, addr(1), &mut b, addr(2), t1);
    assert!(eb.iter().any(|e| matches!(e, EndpointEvent::Data { .. })));
}

fn feed(ep: &mut Endpoint, from: SocketAddr, to: SocketAddr, data: &[u8], now: Instant) {
    ep.handle_input(
        now,
        Input::Datagram {
            source: from,
            local: to,
            data,
        },
    );
}

fn drain(ep: &mut Endpoint) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| ep.poll_transmit())
        .map(|t| t.payload.to_vec())
        .collect()
}

#[test]
fn forged_response_and_final_do_not_break_the_handshake() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    let m1 = drain(&mut a).remove(0);
    feed(&mut b, addr(1), addr(2), &m1, now);
    let m2 = drain(&mut b).remove(0);
    // A forgery with the right indices but junk Noise bytes reaches alice first.
    let mut forged = m2.clone();
    let n = forged.len();
    forged[n - 20] ^= 0xFF;
    feed(&mut a, addr(9), addr(1), &forged, now);
    assert!(drain(&mut a).is_empty());
    feed(&mut a, addr(2), addr(1), &m2, now);
    let m3 = drain(&mut a).remove(0);
    assert_eq!(
        connected(&std::iter::from_fn(|| a.poll_event()).collect::<Vec<_>>()),
        1
    );
    // A forged final reaches bob first.
    let mut forged = m3.clone();
    let n = forged.len();
    forged[n - 5] ^= 0x01;
    feed(&mut b, addr(9), addr(2), &forged, now);
    feed(&mut b, addr(1), addr(2), &m3, now);
    assert_eq!(
        connected(&std::iter::from_fn(|| b.poll_event()).collect::<Vec<_>>()),
        1
    );
    // Junk "finals" naming the live session do not make bob send anything; an exact
    // retransmission of the real final is confirmed.
    drain(&mut b);
    feed(&mut b, addr(9), addr(2), &forged, now);
    assert!(drain(&mut b).is_empty(), "forged final triggered traffic");
    feed(&mut b, addr(1), addr(2), &m3, now);
    assert_eq!(drain(&mut b).len(), 1);
}

#[test]
fn responder_is_no_amplifier_and_answers_retransmissions_from_one_state() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    let m1 = drain(&mut a).remove(0);
    feed(&mut b, addr(1), addr(2), &m1, now);
    let replies = drain(&mut b);
    assert_eq!(replies.len(), 1);
    assert!(
        replies[0].len() <= m1.len(),
        "{} > {}",
        replies[0].len(),
        m1.len()
    );
    // The same message 1 again (its answer was lost): the same answer, no new state.
    feed(&mut b, addr(1), addr(2), &m1, now);
    assert_eq!(drain(&mut b), replies);
    // An unpadded XX message 1 gets no answer at all.
    let short = &m1[..6 + 32];
    feed(&mut b, addr(7), addr(2), short, now);
    assert!(drain(&mut b).is_empty());
    // One source cannot hold more than a few half-open handshakes.
    for i in 0..40u64 {
        let mut other = TestNetwork::new(100 + i).endpoint("carol", now);
        other.connect(now, Destination::Udp(addr(2)), None).unwrap();
        let m = drain(&mut other).remove(0);
        feed(&mut b, addr(8), addr(2), &m, now);
    }
    assert!(b.stats().handshake_flood_drops >= 20, "{:?}", b.stats());
}

#[test]
fn ik_survives_a_round_trip_longer_than_the_retransmission_timeout() {
    // Answers arrive 300 ms after each initiation; retransmissions go every 250 ms and more.
    let net = TestNetwork::new(1);
    let t0 = Instant::now();
    let mut a = net.endpoint("alice", t0);
    let mut b = net.endpoint("bob", t0);
    let bob_key = net.identity("bob").device.dh_public();
    a.connect(t0, Destination::Udp(addr(2)), Some(bob_key))
        .unwrap();
    let rtt = Duration::from_millis(300);
    let mut in_flight: Vec<(Instant, Vec<u8>)> =
        drain(&mut a).into_iter().map(|m| (t0 + rtt, m)).collect();
    let mut now = t0;
    let mut connected_a = false;
    for _ in 0..200 {
        now += Duration::from_millis(10);
        a.handle_timeout(now);
        for m in drain(&mut a) {
            in_flight.push((now + rtt, m));
        }
        let (due, later): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|(t, _)| *t <= now);
        in_flight = later;
        for (_, m) in due {
            feed(&mut b, addr(1), addr(2), &m, now);
            for r in drain(&mut b) {
                feed(&mut a, addr(2), addr(1), &r, now);
            }
        }
        if std::iter::from_fn(|| a.poll_event())
            .any(|e| matches!(e, EndpointEvent::Connected { .. }))
        {
            connected_a = true;
            break;
        }
    }
    assert!(connected_a, "IK never completed with a 300 ms round trip");
}

#[test]
fn revoked_devices_get_no_session_and_lose_theirs() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    let (ea, _) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert_eq!(connected(&ea), 1);
    // Bob learns alice's device was revoked: her session closes...
    let alice_device = net.identity("alice").device.device_id();
    b.revoke(now, [alice_device]);
    let (_, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert_eq!(b.connections().count(), 0);
    let _ = eb;
    // ...and she cannot start another, with either pattern.
    a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    let bob_key = net.identity("bob").device.dh_public();
    a.connect(now, Destination::Udp(addr(2)), Some(bob_key))
        .unwrap();
    let (_, eb) = pump(&mut a, addr(1), &mut b, addr(2), now);
    assert_eq!(connected(&eb), 0, "{eb:?}");
    assert_eq!(b.connections().count(), 0);
    assert!(b.stats().revoked_peers >= 1);
}

/// A peer that restarted (same device keys, no memory of the session) answers data on the old
/// session with a reset: the other side closes the session at once instead of after its idle
/// timeout. A reset with a wrong token, or from another device, changes nothing.
#[test]
fn a_restarted_peer_resets_the_session_and_forged_resets_are_dropped() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    for ik in [false, true] {
        let mut a = net.endpoint("alice", now);
        let mut b = net.endpoint("bob", now);
        let key = ik.then(|| net.identity("bob").device.dh_public());
        let conn = a.connect(now, Destination::Udp(addr(2)), key).unwrap();
        pump(&mut a, addr(1), &mut b, addr(2), now);
        assert!(a.peer(conn).is_some());
        assert!(a.peer(conn).unwrap().reset_token.is_some());

        // Bob restarts: a new endpoint with the same identity (and a different seed, as a
        // real restart would have).
        let mut cfg_seed = [7u8; 32];
        cfg_seed[0] = u8::from(ik);
        let mut b2 =
            natter_core::endpoint::Endpoint::new(natter_core::endpoint::EndpointConfig::new(
                net.identity("bob"),
                cfg_seed,
                TEST_WALL,
                now,
            ));
        // A stranger (carol) cannot make one: her reset for the same index is dropped.
        let mut c = net.endpoint("carol", now);
        a.send(now, conn, b"are you there").unwrap();
        let data = a.poll_transmit().unwrap().payload;
        let feed = |e: &mut Endpoint, from: u8, data: &[u8]| {
            e.handle_input(
                now,
                Input::Datagram {
                    source: addr(from),
                    local: addr(9),
                    data,
                },
            )
        };
        feed(&mut c, 1, &data);
        let forged = c
            .poll_transmit()
            .expect("carol answers with a reset")
            .payload;
        feed(&mut a, 2, &forged);
        assert!(
            a.peer(conn).is_some(),
            "a reset from another device is ignored"
        );
        assert_eq!(a.stats().dropped_reset, 1);
        // Bob's new run answers with the genuine token; one flipped bit is not enough.
        feed(&mut b2, 1, &data);
        let reset = b2
            .poll_transmit()
            .expect("bob answers with a reset")
            .payload;
        assert_eq!(reset.len(), natter_core::wire::packet::RESET_LEN);
        assert!(data.len() >= reset.len(), "a reset never amplifies");
        let mut flipped = reset.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        feed(&mut a, 2, &flipped);
        assert!(a.peer(conn).is_some());
        assert_eq!(a.stats().dropped_reset, 2);
        while a.poll_event().is_some() {}
        feed(&mut a, 2, &reset);
        assert!(a.peer(conn).is_none(), "the session is gone");
        assert_eq!(
            a.poll_event(),
            Some(EndpointEvent::Closed {
                conn,
                cause: CloseCause::Reset
            })
        );
        assert_eq!(a.stats().resets_accepted, 1);
        // Replaying the reset changes nothing more.
        feed(&mut a, 2, &reset);
        assert_eq!(a.stats().dropped_reset, 3);
    }
}

/// Data for unknown sessions gets at most 64 resets a second: no reflector.
#[test]
fn resets_are_rate_limited() {
    let net = TestNetwork::new(1);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    let conn = a.connect(now, Destination::Udp(addr(2)), None).unwrap();
    pump(&mut a, addr(1), &mut b, addr(2), now);
    let mut stranger = net.endpoint("bob", now);
    let mut resets = 0;
    for i in 0..200u32 {
        let t = now + Duration::from_millis(u64::from(i));
        a.send(t, conn, b"x").unwrap();
        let data = a.poll_transmit().unwrap().payload;
        stranger.handle_input(
            t,
            Input::Datagram {
                source: addr(1),
                local: addr(2),
                data: &data,
            },
        );
        resets += std::iter::from_fn(|| stranger.poll_transmit()).count();
    }
    // 200 ms of packets: one window's worth.
    assert_eq!(resets, 64);
    assert_eq!(stranger.stats().resets_sent, 64);
}

/// A session lasts as long as the peer's certificate: a renewed one presented on the session
/// extends it, none closes it (issue 25, item 4); a certificate for other keys is refused.
#[test]
fn a_session_ends_with_its_peers_certificate_unless_a_renewed_one_arrives() {
    let net = TestNetwork::new(77);
    let start = Instant::now();
    let short = |id: &mut LocalIdentity, until: u64| {
        id.certificate = net.authority().certify(
            &id.certificate.user,
            id.device.dh_public(),
            id.device.signing_public(),
            UnixTime(TEST_WALL.0 - 60),
            UnixTime(TEST_WALL.0 + until),
        );
    };
    for renew in [false, true] {
        let mut bob_id = net.identity("bob");
        short(&mut bob_id, 100);
        let mut alice = net.endpoint("alice", start);
        let mut bob = Endpoint::new(natter_core::endpoint::EndpointConfig::new(
            bob_id.clone(),
            [5; 32],
            TEST_WALL,
            start,
        ));
        alice
            .connect(start, Destination::Udp(addr(2)), None)
            .unwrap();
        pump(&mut alice, addr(1), &mut bob, addr(2), start);
        let conn = alice.connections().next().expect("a session");
        if renew {
            // Another device's certificate first: refused.
            let stranger = net.identity("carol").certificate;
            let at = start + Duration::from_secs(50);
            bob.update_certificate(at, stranger);
            pump(&mut alice, addr(1), &mut bob, addr(2), at);
            assert_eq!(alice.stats().certificates_refused, 1);
            let mut renewed = bob_id.clone();
            short(&mut renewed, 3600);
            bob.update_certificate(at, renewed.certificate.clone());
            // The first copy is lost: a copy a keep-alive interval later gets through.
            while bob.poll_transmit().is_some() {}
            let later = at + Duration::from_secs(21);
            alice.send(later, conn, b"still here").unwrap();
            pump(&mut alice, addr(1), &mut bob, addr(2), later);
            bob.handle_timeout(later);
            pump(&mut alice, addr(1), &mut bob, addr(2), later);
            assert_eq!(alice.stats().certificates_updated, 1);
            assert_eq!(
                alice.peer(conn).map(|p| p.certificate.not_after),
                Some(renewed.certificate.not_after)
            );
        }
        // Past the first certificate's end (and the minute of clock-skew allowance).
        let mut events = Vec::new();
        for s in (60..=200).step_by(10) {
            let now = start + Duration::from_secs(s);
            // Keep the session alive both ways meanwhile.
            alice.send(now, conn, b"hi").ok();
            let b = bob.connections().next();
            if let Some(b) = b {
                bob.send(now, b, b"hi").ok();
            }
            let (ea, _) = pump(&mut alice, addr(1), &mut bob, addr(2), now);
            events.extend(ea);
            alice.handle_timeout(now);
            bob.handle_timeout(now);
            let (ea, _) = pump(&mut alice, addr(1), &mut bob, addr(2), now);
            events.extend(ea);
        }
        let closed = events.iter().any(|e| {
            matches!(
                e,
                EndpointEvent::Closed {
                    cause: CloseCause::CertificateExpired,
                    ..
                }
            )
        });
        assert_eq!(closed, !renew, "renewed: {renew}: {events:?}");
        assert_eq!(alice.connections().count(), usize::from(renew));
    }
}
