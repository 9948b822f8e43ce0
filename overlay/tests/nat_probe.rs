//! NAT behaviour discovery (RFC 5780) against a super node's STUN server, for every NAT
//! behaviour the simulator models and the UDP-blocking firewall.

use std::net::SocketAddr;
use std::time::Duration;

use natter_core::overlay::{Filtering, NatEvent, NatProbe, NatProbeConfig, NatType};
use natter_overlay::stun::StunServer;
use natter_sim::{LinkConfig, Mapped, NatConfig, Sim, SimConfig};

fn server_primary() -> SocketAddr {
    "198.18.0.10:3478".parse().unwrap()
}

fn server_other() -> SocketAddr {
    "198.18.0.11:3479".parse().unwrap()
}

/// Classify a client placed behind `nat` (or public when `None`).
fn classify(nat: Option<NatConfig>, seed: u64) -> NatEvent {
    let mut sim: Sim<NatEvent> = Sim::new(SimConfig {
        seed,
        internet: LinkConfig::with_latency(Duration::from_millis(25)),
        ..SimConfig::default()
    });
    let stun = StunServer::new(server_primary(), Some(server_other())).unwrap();
    let addrs = stun.local_addresses();
    let host = sim.add_host("sn", addrs[0], Mapped::new(stun, |e| match e {}));
    for a in &addrs[1..] {
        sim.bind(host, *a);
    }
    let (_, client) = match nat {
        Some(cfg) => {
            let n = sim.add_nat("nat", "198.18.1.1".parse().unwrap(), cfg);
            let addr: SocketAddr = "10.0.0.2:5000".parse().unwrap();
            let probe = NatProbe::new(
                NatProbeConfig::new(server_primary(), vec![addr], [seed as u8; 32]),
                sim.now(),
            );
            (addr, sim.add_host_behind(n, "client", addr, probe))
        }
        None => {
            let addr: SocketAddr = "198.18.2.2:5000".parse().unwrap();
            let probe = NatProbe::new(
                NatProbeConfig::new(server_primary(), vec![addr], [seed as u8; 32]),
                sim.now(),
            );
            (addr, sim.add_host("client", addr, probe))
        }
    };
    let done = sim.run_until_cond(Duration::from_secs(10), |s| !s.events(client).is_empty());
    assert!(done, "the probe finished");
    sim.take_events(client).remove(0).1
}

fn nat_type(e: &NatEvent) -> NatType {
    match e {
        NatEvent::Classified(r) => r.nat,
        other => panic!("not classified: {other:?}"),
    }
}

#[test]
fn every_behaviour_is_classified() {
    for seed in 0..5 {
        assert_eq!(nat_type(&classify(None, seed)), NatType::Open);
        assert_eq!(
            nat_type(&classify(Some(NatConfig::full_cone()), seed)),
            NatType::EndpointIndependent(Filtering::EndpointIndependent)
        );
        assert_eq!(
            nat_type(&classify(Some(NatConfig::restricted_cone()), seed)),
            NatType::EndpointIndependent(Filtering::AddressDependent)
        );
        assert_eq!(
            nat_type(&classify(Some(NatConfig::port_restricted_cone()), seed)),
            NatType::EndpointIndependent(Filtering::AddressAndPortDependent)
        );
        assert_eq!(
            nat_type(&classify(Some(NatConfig::symmetric()), seed)),
            NatType::Symmetric
        );
        assert_eq!(
            nat_type(&classify(Some(NatConfig::udp_blocking_firewall()), seed)),
            NatType::UdpBlocked
        );
    }
}

#[test]
fn reports_the_mapped_address_and_time() {
    let NatEvent::Classified(r) = classify(Some(NatConfig::full_cone()), 1) else {
        panic!()
    };
    let mapped = r.mapped.expect("mapped address");
    assert_eq!(
        mapped.ip(),
        "198.18.1.1".parse::<std::net::IpAddr>().unwrap()
    );
    // Four round trips of 50 ms: Binding, filtering (answered), mapping (same mapping).
    assert!(r.elapsed < Duration::from_millis(400), "{:?}", r.elapsed);
    // UDP blocked costs the retries of the first test only.
    let NatEvent::Classified(r) = classify(Some(NatConfig::udp_blocking_firewall()), 1) else {
        panic!()
    };
    assert!(r.elapsed <= Duration::from_millis(700), "{:?}", r.elapsed);
}
