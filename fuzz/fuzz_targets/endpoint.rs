//! The endpoint machine fed arbitrary datagrams (split on 0xFF 0xFF) from two sources, after a
//! real session exists: never panics, never produces a data event from garbage.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use natter_core::endpoint::EndpointEvent;
use natter_core::sansio::{Destination, Input, Machine};
use natter_core::testkit::{pump, TestNetwork};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let net = TestNetwork::new(1);
    let (a_addr, b_addr) = ("198.18.0.1:1".parse().unwrap(), "198.18.0.2:1".parse().unwrap());
    let mut a = net.endpoint("alice", now);
    let mut b = net.endpoint("bob", now);
    a.connect(now, Destination::Udp(b_addr), None).unwrap();
    pump(&mut a, a_addr, &mut b, b_addr, now);
    for (i, dgram) in data.split(|&x| x == 0xFF).enumerate() {
        let source = if i % 2 == 0 { a_addr } else { "198.18.0.9:9".parse().unwrap() };
        let t = now + Duration::from_millis(i as u64);
        b.handle_input(t, Input::Datagram { source, local: b_addr, data: dgram });
        b.handle_timeout(t);
        while b.poll_transmit().is_some() {}
        while let Some(e) = b.poll_event() {
            assert!(!matches!(e, EndpointEvent::Data { .. } | EndpointEvent::Media { .. }));
        }
    }
});
