//! Two endpoints over real UDP sockets on loopback: handshake, encrypted exchange, replay and
//! garbage rejection.

use std::net::UdpSocket;
use std::time::Duration;

use natter_core::endpoint::{Endpoint, EndpointEvent};
use natter_core::sansio::Destination;
use natter_core::testkit::TestNetwork;
use natter_transport::UdpNode;

fn spawn(net: &TestNetwork, user: &'static str) -> UdpNode<Endpoint> {
    // The throwaway network's certificates are valid around TEST_WALL, which the test
    // endpoints use as their wall-clock anchor.
    UdpNode::spawn("127.0.0.1:0".parse().unwrap(), |now| {
        net.endpoint(user, now)
    })
    .unwrap()
}

#[test]
fn handshake_and_exchange_over_loopback() {
    let net = TestNetwork::new(42);
    let alice = spawn(&net, "alice");
    let bob = spawn(&net, "bob");
    let bob_addr = bob.local_addr();
    let conn =
        alice.command(move |e, now| e.connect(now, Destination::Udp(bob_addr), None).unwrap());
    let timeout = Duration::from_secs(5);
    let (ev, _) = alice.wait_for(timeout, |e| matches!(e, EndpointEvent::Connected { .. }));
    assert!(ev.is_some(), "alice connected");
    let (ev, _) = bob.wait_for(timeout, |e| matches!(e, EndpointEvent::Connected { .. }));
    let Some(EndpointEvent::Connected {
        conn: bob_conn,
        peer,
        ..
    }) = ev
    else {
        panic!()
    };
    assert_eq!(peer.certificate.user.as_str(), "alice");

    for i in 0..200u32 {
        alice.command(move |e, now| e.send_media(now, conn, &i.to_be_bytes()).unwrap());
    }
    let mut got = Vec::new();
    while got.len() < 200 {
        let (ev, _) = bob.wait_for(timeout, |e| matches!(e, EndpointEvent::Media { .. }));
        let Some(EndpointEvent::Media { data, .. }) = ev else {
            panic!("missing media after {}", got.len())
        };
        got.push(u32::from_be_bytes(data[..4].try_into().unwrap()));
    }
    got.sort_unstable();
    assert_eq!(got, (0..200).collect::<Vec<_>>());

    // Garbage from a stranger's socket: dropped and counted, session unaffected.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..500u32 {
        let junk: Vec<u8> = (0..(i % 200)).map(|j| (j * 31 + i) as u8).collect();
        stranger.send_to(&junk, bob_addr).unwrap();
    }
    bob.command(move |e, now| e.send(now, bob_conn, b"pong").unwrap());
    let (ev, _) = alice.wait_for(timeout, |e| matches!(e, EndpointEvent::Data { .. }));
    assert!(ev.is_some());
    let stats = bob.command(|e, _| e.stats());
    assert!(stats.packets_in >= 200, "{stats:?}");
    alice.shutdown().unwrap();
    bob.shutdown().unwrap();
}
