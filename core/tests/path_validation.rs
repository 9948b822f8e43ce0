//! Path validation (issue 25, item 3), in the simulator: an authenticated packet of one's own
//! session sent with a spoofed source address moves nothing and sends the spoofed address at
//! most three times what it "sent"; a peer that really moved is followed after one challenge;
//! a session never moves onto an address another device's session holds.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use natter_core::endpoint::{ConnId, Endpoint, EndpointEvent, Path};
use natter_core::sansio::Destination;
use natter_core::testkit::TestNetwork;
use natter_core::wire::packet::Packet;
use natter_sim::{CapturePoint, HostId, NatConfig, Sim, SimConfig, Verdict};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The super node everyone talks to.
fn server_addr() -> SocketAddr {
    addr("198.18.0.2:4000")
}

/// The victim, a public host with a session of its own at the server.
fn victim_addr() -> SocketAddr {
    addr("198.18.0.3:4000")
}

struct World {
    sim: Sim<EndpointEvent>,
    server: HostId,
    mallory: HostId,
    victim: HostId,
    /// Mallory's session at the server, the victim's, and Mallory's own handle.
    at_server_mallory: ConnId,
    at_server_victim: ConnId,
    mallory_conn: ConnId,
    victim_conn: ConnId,
    /// The NAT Mallory sits behind (to make her really move).
    nat: natter_sim::NatId,
    /// The packet Mallory sent that the interceptor held back.
    held: Rc<RefCell<Option<Bytes>>>,
}

fn world(seed: u64) -> World {
    let mut sim: Sim<EndpointEvent> = Sim::new(SimConfig {
        seed,
        capture: true,
        ..SimConfig::default()
    });
    let net = TestNetwork::new(seed);
    let start = sim.start();
    let server = sim.add_host("server", server_addr(), net.endpoint("server", start));
    let nat = sim.add_nat(
        "mallory-nat",
        addr("198.18.50.1:0").ip(),
        NatConfig::full_cone(),
    );
    let mallory = sim.add_host_behind(
        nat,
        "mallory",
        addr("10.0.0.2:5000"),
        net.endpoint("mallory", start),
    );
    let victim = sim.add_host("victim", victim_addr(), net.endpoint("victim", start));
    let mallory_conn = sim.with_machine(mallory, |m: &mut Endpoint, now| {
        m.connect(now, Destination::Udp(server_addr()), None)
            .unwrap()
    });
    let victim_conn = sim.with_machine(victim, |m: &mut Endpoint, now| {
        m.connect(now, Destination::Udp(server_addr()), None)
            .unwrap()
    });
    let up = sim.run_until_cond(Duration::from_secs(10), |s| {
        s.machine::<Endpoint>(server).connections().count() == 2
    });
    assert!(up, "both sessions up");
    sim.run_for(Duration::from_millis(500));
    let by_peer = |sim: &Sim<EndpointEvent>, user: &str| {
        let s = sim.machine::<Endpoint>(server);
        s.connections()
            .find(|c| {
                s.peer(*c)
                    .is_some_and(|p| p.certificate.user.as_str() == user)
            })
            .unwrap()
    };
    let at_server_mallory = by_peer(&sim, "mallory");
    let at_server_victim = by_peer(&sim, "victim");
    World {
        sim,
        server,
        mallory,
        victim,
        at_server_mallory,
        at_server_victim,
        mallory_conn,
        victim_conn,
        nat,
        held: Rc::new(RefCell::new(None)),
    }
}

impl World {
    /// Mallory sends `data` on her session, but the packet leaves with the victim's address as
    /// its source (an off-path spoofer's best move: a fresh, authenticated packet).
    fn spoof(&mut self, data: &[u8]) -> usize {
        let mallory = self.mallory;
        let held = self.held.clone();
        self.sim.set_interceptor(move |c| {
            if c.host == Some(mallory) && c.dst == server_addr() && held.borrow().is_none() {
                *held.borrow_mut() = Some(c.payload.clone());
                return Verdict::Drop;
            }
            Verdict::Pass
        });
        let conn = self.mallory_conn;
        self.sim
            .with_machine(mallory, |m: &mut Endpoint, now| m.send(now, conn, data))
            .unwrap();
        self.sim.run_for(Duration::from_millis(1));
        self.sim.clear_interceptor();
        let packet = self
            .held
            .borrow_mut()
            .take()
            .expect("mallory sent a packet");
        let len = packet.len();
        self.sim
            .inject_datagram(victim_addr(), server_addr(), packet);
        len
    }

    fn server_remote(&self, conn: ConnId) -> Path {
        self.sim
            .machine::<Endpoint>(self.server)
            .remote(conn)
            .unwrap()
            .clone()
    }

    /// Bytes the server sent to the victim's address on sessions other than the victim's,
    /// since `since`.
    fn bytes_to_victim_not_hers(&self, since: Duration) -> usize {
        let victim_index = self.victim_conn.0;
        self.sim
            .captured()
            .iter()
            .filter(|c| c.at >= since && c.point == CapturePoint::Sent && c.dst == victim_addr())
            .filter(|c| c.host == Some(self.server))
            .filter(|c| {
                !matches!(Packet::decode(&c.payload),
                    Ok(Packet::Data { header, .. }) if header.receiver.0 == victim_index)
            })
            .map(|c| c.payload.len())
            .sum()
    }

    fn path_changes_at_server(&mut self) -> Vec<(ConnId, Path)> {
        self.sim
            .take_events(self.server)
            .into_iter()
            .filter_map(|(_, e)| match e {
                EndpointEvent::PathChanged { conn, remote } => Some((conn, remote)),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn a_spoofed_source_moves_no_session_and_gets_at_most_three_times_its_bytes() {
    let mut w = world(41);
    let mallory_real = w.server_remote(w.at_server_mallory);
    let _ = w.path_changes_at_server();
    let since = w.sim.elapsed();
    let mut spoofed = 0;
    for i in 0..20u8 {
        spoofed += w.spoof(&[i; 40]);
        w.sim.run_for(Duration::from_millis(50));
    }
    w.sim.run_for(Duration::from_secs(3));

    // Nothing moved: Mallory's session stays at her real address, the victim's at hers.
    assert_eq!(w.server_remote(w.at_server_mallory), mallory_real);
    assert_eq!(
        w.server_remote(w.at_server_victim),
        Path::udp(victim_addr())
    );
    assert_eq!(w.path_changes_at_server(), vec![]);
    let stats = w.sim.machine::<Endpoint>(w.server).stats();
    assert_eq!(stats.paths_validated, 0);
    assert!(stats.path_challenges_sent > 0, "{stats:?}");

    // The spoofed address got only challenges, within three times the spoofed bytes.
    let reflected = w.bytes_to_victim_not_hers(since);
    eprintln!(
        "SPOOFED SOURCE: {spoofed} bytes in 20 packets spoofed, {reflected} bytes sent to the \
         claimed address ({:.2}x), {} challenges",
        reflected as f64 / spoofed as f64,
        w.sim
            .machine::<Endpoint>(w.server)
            .stats()
            .path_challenges_sent
    );
    assert!(reflected > 0, "challenges were sent to the claimed address");
    assert!(
        reflected <= 3 * spoofed,
        "{reflected} bytes reflected for {spoofed} spoofed"
    );

    // Mallory's own data still reached the server (authenticated, delivered once), and both
    // sessions still work both ways at their real addresses.
    let data = |w: &mut World, h: HostId| {
        w.sim
            .take_events(h)
            .into_iter()
            .filter(|(_, e)| matches!(e, EndpointEvent::Data { .. }))
            .count()
    };
    let (mallory, victim) = (w.mallory, w.victim);
    let _ = data(&mut w, mallory);
    let _ = data(&mut w, victim);
    for (conn, h) in [
        (w.at_server_mallory, w.mallory),
        (w.at_server_victim, w.victim),
    ] {
        w.sim
            .with_machine(w.server, |m: &mut Endpoint, now| m.send(now, conn, b"hi"))
            .unwrap();
        w.sim.run_for(Duration::from_millis(100));
        assert_eq!(data(&mut w, h), 1, "{}", w.sim.host_name(h));
    }
}

#[test]
fn a_peer_that_really_moved_is_followed_after_one_challenge() {
    let mut w = world(42);
    let before = w.server_remote(w.at_server_mallory);
    // Mallory's NAT gets a new public address (a genuine rebinding).
    w.sim.set_nat_external_ip(w.nat, addr("198.18.50.9:0").ip());
    let conn = w.mallory_conn;
    w.sim
        .with_machine(w.mallory, |m: &mut Endpoint, now| {
            m.send(now, conn, b"moved")
        })
        .unwrap();
    w.sim.run_for(Duration::from_millis(500));
    let after = w.server_remote(w.at_server_mallory);
    assert_ne!(after, before);
    assert_eq!(
        after.peer_udp().map(|a| a.ip()),
        Some(addr("198.18.50.9:0").ip())
    );
    assert_eq!(
        w.path_changes_at_server(),
        vec![(w.at_server_mallory, after)]
    );
    assert_eq!(
        w.sim.machine::<Endpoint>(w.server).stats().paths_validated,
        1
    );
}

#[test]
fn a_session_never_moves_onto_another_devices_address() {
    // Mallory is on path this time: she sees the challenge sent to the victim's address and
    // answers it. The address is the victim's session's, so the move is still refused.
    let mut w = world(43);
    let mallory_real = w.server_remote(w.at_server_mallory);
    let since = w.sim.elapsed();
    w.spoof(b"spoofed");
    w.sim.run_for(Duration::from_millis(100));
    let challenges: Vec<Bytes> = w
        .sim
        .captured()
        .iter()
        .filter(|c| c.at >= since && c.point == CapturePoint::Sent)
        .filter(|c| c.host == Some(w.server) && c.dst == victim_addr())
        .map(|c| c.payload.clone())
        .collect();
    assert!(!challenges.is_empty());
    let mallory_public = mallory_real.peer_udp().unwrap();
    for c in challenges {
        w.sim.inject_datagram(server_addr(), mallory_public, c);
    }
    w.sim.run_for(Duration::from_secs(2));
    assert_eq!(w.server_remote(w.at_server_mallory), mallory_real);
    assert_eq!(w.path_changes_at_server(), vec![]);
    let stats = w.sim.machine::<Endpoint>(w.server).stats();
    assert_eq!(stats.paths_validated, 0);
    assert!(stats.paths_refused >= 1, "{stats:?}");
}
