//! Sessions over relayed paths, path probes and path switching (the call path machinery).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::endpoint::{ConnId, Endpoint, EndpointEvent, Path};
use natter_core::sansio::{Destination, Input, Machine};
use natter_core::testkit::TestNetwork;
use natter_core::wire::relay;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 4000))
}

const A: u8 = 1;
const B: u8 = 2;
const RELAY: u8 = 9;
const CHANNEL: u32 = 77;

/// A tiny network: A at .1, B at .2, a relay at .9 that forwards channel 77 between them.
/// Datagrams whose TTL is below 3 die on the way (they "open A's NAT" only). Returns
/// everything each side reported.
fn run(
    a: &mut Endpoint,
    b: &mut Endpoint,
    now: Instant,
) -> (Vec<EndpointEvent>, Vec<EndpointEvent>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..64 {
        let mut moved = false;
        for from in [A, B] {
            let (src, dst) = if from == A {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            moved |= deliver(from, src, dst, now);
        }
        while let Some(e) = a.poll_event() {
            ea.push(e);
        }
        while let Some(e) = b.poll_event() {
            eb.push(e);
        }
        if !moved {
            break;
        }
    }
    (ea, eb)
}

/// Deliver what `src` (at `from`) sends to the other side or through the relay.
fn deliver(from: u8, src: &mut Endpoint, dst: &mut Endpoint, now: Instant) -> bool {
    let mut moved = false;
    let to_peer = if from == A { B } else { A };
    while let Some(t) = src.poll_transmit() {
        moved = true;
        if t.ttl.is_some_and(|ttl| ttl < 3) {
            continue;
        }
        let Destination::Udp(to) = t.destination else {
            panic!("no streams here")
        };
        let (source, data) = if to == addr(RELAY) {
            let (h, inner) = relay::decode(&t.payload).expect("a relay frame");
            // The relay sees only ciphertext.
            assert!(!inner.windows(17).any(|w| w == b"through the relay"));
            assert!(!h.to_party);
            assert_eq!(h.channel, CHANNEL);
            let mut out = bytes::BytesMut::new();
            relay::encode(h.channel, true, inner, &mut out);
            assert_eq!(out.len(), t.payload.len(), "the relay adds nothing");
            (addr(RELAY), out.to_vec())
        } else {
            assert_eq!(to, addr(to_peer));
            (addr(from), t.payload.to_vec())
        };
        dst.handle_input(
            now,
            Input::Datagram {
                source,
                local: addr(to_peer),
                data: &data,
            },
        );
    }
    moved
}

fn relayed() -> Path {
    Path::Relayed {
        relay: Destination::Udp(addr(RELAY)),
        channel: CHANNEL,
    }
}

fn connected(events: &[EndpointEvent]) -> (ConnId, Path) {
    events
        .iter()
        .find_map(|e| match e {
            EndpointEvent::Connected { conn, remote, .. } => Some((*conn, remote.clone())),
            _ => None,
        })
        .expect("connected")
}

#[test]
fn a_session_runs_through_a_relay_and_moves_to_a_direct_path() {
    let net = TestNetwork::new(5);
    let now = Instant::now();
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    let bob_key = net.identity("bob").device.dh_public();
    // IK through the relay: Bob's static key is known from his presence record.
    a.connect(now, relayed(), Some(bob_key)).unwrap();
    let (ea, eb) = run(&mut a, &mut b, now);
    let (ca, remote_a) = connected(&ea);
    let (cb, remote_b) = connected(&eb);
    assert_eq!(remote_a, relayed());
    assert_eq!(remote_b, relayed(), "Bob answers through the relay channel");
    assert!(b.stats().relayed_in >= 1);

    a.send(now, ca, b"through the relay").unwrap();
    let (_, eb) = run(&mut a, &mut b, now);
    assert!(eb.iter().any(
        |e| matches!(e, EndpointEvent::Data { data, .. } if &data[..] == b"through the relay")
    ));

    // A low-TTL probe opens A's side and dies; a normal probe is answered on its own path and
    // moves neither session.
    let direct = Path::udp(addr(B));
    a.probe(now, ca, direct.clone(), Some(2)).unwrap();
    let (ea, eb) = run(&mut a, &mut b, now);
    assert!(ea.is_empty() && eb.is_empty(), "{ea:?} {eb:?}");
    let id = a.probe(now, ca, direct.clone(), None).unwrap();
    let (ea, eb) = run(&mut a, &mut b, now);
    match &eb[..] {
        [EndpointEvent::ProbeReceived { conn, path }] => {
            assert_eq!((*conn, path), (cb, &Path::udp(addr(A))));
        }
        other => panic!("a probe moves nothing on B, it is only reported: {other:?}"),
    }
    match &ea[..] {
        [EndpointEvent::ProbeAnswered {
            conn,
            id: got,
            path,
            observed,
            ..
        }] => {
            assert_eq!((*conn, *got, path), (ca, id, &direct));
            assert_eq!(*observed, Some(addr(A)), "B saw A's direct address");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.remote(ca), Some(&relayed()));
    assert_eq!(b.remote(cb), Some(&relayed()));

    // A chooses the direct path; B follows when A's next packet arrives there.
    assert!(a.set_path(ca, direct.clone()));
    a.send(now, ca, b"direct").unwrap();
    let (_, eb) = run(&mut a, &mut b, now);
    assert!(eb.iter().any(|e| matches!(
        e,
        EndpointEvent::PathChanged { remote, .. } if *remote == Path::udp(addr(A))
    )));
    b.send(now, cb, b"back").unwrap();
    let before = a.stats().relayed_in;
    let (ea, _) = run(&mut a, &mut b, now);
    assert!(ea
        .iter()
        .any(|e| matches!(e, EndpointEvent::Data { data, .. } if &data[..] == b"back")));
    assert_eq!(a.stats().relayed_in, before, "B answered directly");

    // And back to the relay (the direct path died): B follows again.
    assert!(a.set_path(ca, relayed()));
    a.send(now + Duration::from_millis(10), ca, b"relay again")
        .unwrap();
    let (_, eb) = run(&mut a, &mut b, now);
    assert!(eb.iter().any(|e| matches!(
        e,
        EndpointEvent::PathChanged { remote, .. } if *remote == relayed()
    )));
}

#[test]
fn malformed_relay_frames_are_dropped_and_counted() {
    let net = TestNetwork::new(6);
    let now = Instant::now();
    let mut b = net.endpoint("bob", now);
    let frames: [&[u8]; 5] = [
        &[0x71],
        &[0x71, 0x80, 0, 0, 1],
        &[0x71, 0x00, 0, 0, 1, 0x51, 0, 0],
        &[0x71, 0x80, 0, 0, 1, 0x71, 0x80, 0, 0, 1, 0x51],
        &[0x71, 0x80, 0, 0, 0, 0x51],
    ];
    for f in frames {
        b.handle_input(
            now,
            Input::Datagram {
                source: addr(RELAY),
                local: addr(B),
                data: f,
            },
        );
    }
    // Wrong direction, nested relay frames, channel 0, too short: all malformed.
    assert_eq!(b.stats().dropped_malformed, 5);
    assert!(b.poll_transmit().is_none());
    assert!(b.poll_event().is_none());
}
