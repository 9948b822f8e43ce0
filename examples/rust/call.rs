//! A call on loopback with the Rust API: one super node, alice calls bob by name, they exchange
//! media frames for a second, alice hangs up.
//!
//! `cargo run -p natter-overlay --example call`

use std::time::{Duration, Instant};

use natter_core::call::CallEvent;
use natter_core::crypto::UserName;
use natter_core::overlay::HostCache;
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_overlay::node::{DialOutcome, Node, NodeConfig, NodeEvent, RolePolicy};
use natter_transport::runtime::{Runtime, RuntimeConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A throwaway authority certifies the devices; real deployments log in to a login server
    // (`natter_transport::login::client::login`) and get the same `LocalIdentity`.
    let net = TestNetwork::new(7);
    let wall = TEST_WALL;
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // A super node (on a free port) and the host cache that points clients at it.
    let probe = std::net::UdpSocket::bind(loopback(0))?;
    let sn_addr = probe.local_addr()?;
    drop(probe);
    let mut cfg = NodeConfig::new(
        net.identity("supernode"),
        [1; 32],
        wall,
        Instant::now(),
        sn_addr,
    );
    cfg.role = RolePolicy::Force;
    let (udp, tcp) = {
        let n = Node::new(cfg.clone(), Instant::now());
        (n.bind_addresses(), n.tcp_listen_addresses())
    };
    let _sn = Runtime::spawn(RuntimeConfig { udp, tcp }, move |now, _| {
        cfg.clock_anchor = now;
        Node::new(cfg, now)
    })?;
    let mut cache = HostCache::new();
    cache.insert(sn_addr, None, wall);

    // Two users' nodes (ordinary nodes: they never become super nodes).
    let client = |user: &str, seed: u8| {
        let (identity, cache) = (net.identity(user), cache.clone());
        Runtime::spawn(
            RuntimeConfig {
                udp: vec![loopback(0)],
                tcp: vec![],
            },
            move |now, addrs| {
                let mut cfg = NodeConfig::new(identity, [seed; 32], wall, now, addrs[0]);
                cfg.role = RolePolicy::Forbid;
                cfg.host_cache = cache;
                Node::new(cfg, now)
            },
        )
    };
    let alice = client("alice", 2)?;
    let bob = client("bob", 3)?;
    std::thread::sleep(Duration::from_millis(500)); // both attach and publish their records

    // alice calls bob by name; bob answers when it rings.
    alice.command(|n, now| n.call(now, UserName::parse("bob").expect("a valid name")));
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut call, mut frames) = (None, [0u32; 2]);
    while Instant::now() < deadline {
        for (i, rt) in [&alice, &bob].into_iter().enumerate() {
            while let Ok(e) = rt.events().try_recv() {
                match e {
                    NodeEvent::Dial {
                        outcome: DialOutcome::Failed(why),
                        ..
                    } => return Err(format!("could not call: {why}").into()),
                    NodeEvent::Call(CallEvent::Incoming { call: id, user, .. }) => {
                        println!("bob: {user} calls");
                        rt.command(move |n, now| n.answer(now, id))?;
                    }
                    NodeEvent::Call(CallEvent::Connected { call: id, .. }) => {
                        call = Some((id, Instant::now()));
                    }
                    NodeEvent::CallPath { kind, .. } => {
                        println!("{}: path {}", ["alice", "bob"][i], kind.name());
                    }
                    NodeEvent::CallMedia { .. } => frames[i] += 1,
                    NodeEvent::Call(CallEvent::Ended { reason, .. }) => {
                        println!("{}: ended ({reason:?})", ["alice", "bob"][i]);
                    }
                    _ => {}
                }
            }
        }
        if let Some((id, since)) = call {
            // Media frames start with a 5-byte header (flags, sequence, timestamp); the media
            // engine (`natter_media::call::CallAudio`) makes real Opus frames.
            let frame = [0u8, 0, frames[0] as u8, 0, 0, 0xAA];
            alice.command(move |n, now| n.send_media(now, id, &frame).ok());
            bob.command(move |n, now| n.send_media(now, id, &frame).ok());
            if since.elapsed() > Duration::from_secs(1) {
                alice.command(move |n, now| n.hang_up(now, id).ok());
                std::thread::sleep(Duration::from_millis(200));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("frames received: alice {}, bob {}", frames[0], frames[1]);
    if frames.contains(&0) {
        return Err("media did not flow both ways".into());
    }
    Ok(())
}
