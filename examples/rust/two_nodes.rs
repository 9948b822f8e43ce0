//! Two Natter nodes on loopback: handshake, then an encrypted message each way.
//!
//! `cargo run -p natter-transport --example two_nodes`

use std::time::Duration;

use natter_core::endpoint::EndpointEvent;
use natter_core::sansio::Destination;
use natter_core::testkit::TestNetwork;
use natter_transport::UdpNode;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A throwaway authority certifies both devices; real deployments log in to a login server.
    let net = TestNetwork::new(1);
    let bob = UdpNode::spawn("127.0.0.1:0".parse()?, |now| net.endpoint("bob", now))?;
    let alice = UdpNode::spawn("127.0.0.1:0".parse()?, |now| net.endpoint("alice", now))?;
    let bob_addr = bob.local_addr();
    let conn = alice.command(move |e, now| e.connect(now, Destination::Udp(bob_addr), None))?;

    let wait = Duration::from_secs(5);
    let connected = |e: &EndpointEvent| matches!(e, EndpointEvent::Connected { .. });
    let (Some(_), _) = alice.wait_for(wait, connected) else {
        return Err("no handshake".into());
    };
    let (
        Some(EndpointEvent::Connected {
            conn: back, peer, ..
        }),
        _,
    ) = bob.wait_for(wait, connected)
    else {
        return Err("bob saw no handshake".into());
    };
    println!(
        "bob: connected to {} (device {})",
        peer.certificate.user, peer.certificate.device
    );

    alice.command(move |e, now| e.send(now, conn, b"hello bob"))?;
    bob.command(move |e, now| e.send(now, back, b"hello alice"))?;
    for (name, node) in [("bob", &bob), ("alice", &alice)] {
        if let (Some(EndpointEvent::Data { data, .. }), _) =
            node.wait_for(wait, |e| matches!(e, EndpointEvent::Data { .. }))
        {
            println!("{name}: received {:?}", String::from_utf8_lossy(&data));
        }
    }
    Ok(())
}
