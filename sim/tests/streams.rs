//! Reliable streams.

mod common;

use std::time::Duration;

use common::*;
use natter_core::sansio::StreamId;
use natter_sim::toy::{ToyEvent, ToyMachine};
use natter_sim::{DropReason, LinkConfig, NatConfig, Sim, SimConfig, StreamStatus, TraceKind};

fn write(sim: &mut S, host: natter_sim::HostId, stream: StreamId, data: Vec<u8>) {
    sim.with_machine(host, |m: &mut ToyMachine, now| {
        m.send_stream(now, stream, data)
    });
}

/// Chunk `i`: its index repeated, with a varying length.
fn chunk(i: u32) -> Vec<u8> {
    let len = 1 + (i as usize * 37) % 300;
    i.to_be_bytes().iter().copied().cycle().take(len).collect()
}

#[test]
fn bytes_arrive_in_order_over_a_lossy_jittery_path() {
    let mut sim = Sim::new(SimConfig {
        seed: 77,
        internet: LinkConfig::with_latency(Duration::from_millis(40))
            .jitter(Duration::from_millis(30))
            .loss(0.2)
            .reorder(0.1, Duration::from_millis(100))
            .duplicate(0.1),
        ..SimConfig::default()
    });
    let nat = sim.add_nat("nat", "198.18.0.1".parse().unwrap(), NatConfig::symmetric());
    let alice = toy_behind(&mut sim, nat, "alice", "192.168.0.2:5000");
    let server = toy(&mut sim, "server", "198.18.5.5:443");

    let stream = sim.connect_stream(alice, sa("198.18.5.5:443"));
    assert_eq!(
        sim.stream_info(stream).unwrap().status,
        StreamStatus::Connecting
    );
    let mut sent_up = Vec::new();
    let mut sent_down = Vec::new();
    let mut server_end = None;
    let mut down_writes = 0;
    for i in 0..300 {
        // Writes start before the connection is even established.
        let c = chunk(i);
        sent_up.extend_from_slice(&c);
        write(&mut sim, alice, stream, c);
        if server_end.is_none() {
            server_end = opened(&sim, server).first().map(|(s, _)| *s);
        }
        if let Some(s) = server_end {
            let c = chunk(1000 + i);
            sent_down.extend_from_slice(&c);
            write(&mut sim, server, s, c);
            down_writes += 1;
        }
        sim.run_for(Duration::from_millis(3));
    }
    sim.run_for(Duration::from_secs(30));
    let server_end = server_end.unwrap();
    assert_eq!(sim.stream_info(stream).unwrap().status, StreamStatus::Open);
    assert_eq!(sim.stream_info(server_end).unwrap().peer, Some(stream));
    assert_eq!(stream_bytes(&sim, server, server_end), sent_up);
    assert_eq!(stream_bytes(&sim, alice, stream), sent_down);
    let c = sim.counters();
    assert!(c.stream_retransmits > 50, "{c:?}");
    assert_eq!(c.stream_writes, 300 + down_writes);
    assert_eq!(c.stream_deliveries, 300 + down_writes);
    assert!(down_writes > 250);
    assert_eq!(c.streams_opened, 1);
    assert!(sim
        .trace()
        .of_kind(TraceKind::Dropped(DropReason::RetransmitsExhausted))
        .next()
        .is_none());
}

#[test]
fn streams_are_announced_to_both_ends() {
    let mut sim = sim(1);
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b = toy(&mut sim, "b", "198.18.0.2:2000");
    let s = sim.connect_stream(a, sa("198.18.0.2:2000"));
    sim.run_for(Duration::from_secs(1));
    let local = sim.stream_info(s).unwrap().local;
    assert_eq!(local.ip().to_string(), "198.18.0.1");
    assert!(local.port() >= 49152);
    assert_eq!(opened(&sim, b), vec![(opened(&sim, b)[0].0, local)]);
    // Announced on SYN arrival, one latency after connect.
    assert_eq!(sim.events(b)[0].0, Duration::from_millis(25));
    assert_ne!(opened(&sim, b)[0].0, s, "each side has its own id");
    // The opener hears when the handshake completes, one round trip after connect.
    assert_eq!(opened(&sim, a), vec![(s, sa("198.18.0.2:2000"))]);
    assert_eq!(sim.events(a)[0].0, Duration::from_millis(50));
}

#[test]
fn close_is_ordered_after_data_and_reaches_both_sides() {
    let mut sim = sim(2);
    sim.set_internet_link(LinkConfig::default().jitter(Duration::from_millis(20)));
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b = toy(&mut sim, "b", "198.18.0.2:2000");
    let s = sim.connect_stream(a, sa("198.18.0.2:2000"));
    for i in 0..3 {
        write(&mut sim, a, s, vec![i; 10]);
    }
    assert!(sim.close_stream(a, s));
    assert!(closed(&sim, a, s), "the closing side hears at once");
    assert!(!sim.close_stream(a, s), "only once");
    write(&mut sim, a, s, vec![9]);
    sim.run_for(Duration::from_secs(1));
    let (b_end, _) = opened(&sim, b)[0];
    let kinds: Vec<&ToyEvent> = sim.events(b).iter().map(|(_, e)| e).collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert!(matches!(kinds[0], ToyEvent::StreamOpened { .. }));
    assert_eq!(
        stream_bytes(&sim, b, b_end),
        [[0u8; 10], [1; 10], [2; 10]].concat()
    );
    assert_eq!(*kinds[4], ToyEvent::StreamClosed { stream: b_end });
    assert_eq!(
        sim.trace()
            .of_kind(TraceKind::Dropped(DropReason::StreamClosed))
            .count(),
        1
    );
    // Writing back on a closed stream is dropped too.
    write(&mut sim, b, b_end, vec![1]);
    sim.run_for(Duration::from_secs(1));
    assert!(stream_bytes(&sim, a, s).is_empty());
}

#[test]
fn connection_refused_fails_fast_and_unreachable_fails_after_timeout() {
    let mut sim = sim(3);
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    toy(&mut sim, "b", "198.18.0.2:2000");
    let refused = sim.connect_stream(a, sa("198.18.0.2:2001"));
    let nowhere = sim.connect_stream(a, sa("198.18.9.9:80"));
    write(&mut sim, a, refused, vec![1, 2, 3]);
    sim.run_for(Duration::from_secs(10));
    let closes: Vec<(Duration, StreamId)> = sim
        .events(a)
        .iter()
        .filter_map(|(t, e)| match e {
            ToyEvent::StreamClosed { stream } => Some((*t, *stream)),
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        vec![
            (Duration::from_millis(50), refused),
            (Duration::from_secs(3), nowhere)
        ]
    );
    assert_eq!(sim.counters().streams_failed, 2);
    assert_eq!(sim.counters().stream_deliveries, 0);
}

#[test]
fn unknown_stream_writes_are_dropped() {
    let mut sim = sim(4);
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b = toy(&mut sim, "b", "198.18.0.2:2000");
    let s = sim.connect_stream(a, sa("198.18.0.2:2000"));
    write(&mut sim, a, StreamId(999), vec![1]);
    // Another host's stream id is not usable either.
    write(&mut sim, b, s, vec![1]);
    assert_eq!(
        sim.trace()
            .of_kind(TraceKind::Dropped(DropReason::UnknownStream))
            .count(),
        2
    );
    assert!(!sim.close_stream(b, s));
}

#[test]
fn a_dead_path_resets_the_stream() {
    let mut sim = sim(5);
    let a = toy(&mut sim, "a", "198.18.0.1:1000");
    let b = toy(&mut sim, "b", "198.18.0.2:2000");
    let s = sim.connect_stream(a, sa("198.18.0.2:2000"));
    write(&mut sim, a, s, b"x".to_vec());
    sim.run_for(Duration::from_secs(1));
    let (b_end, _) = opened(&sim, b)[0];
    // Links are looked up per segment, so cutting the internet affects open streams: the
    // next write is lost over and over until the stream gives up.
    sim.set_internet_link(LinkConfig::default().loss(1.0));
    write(&mut sim, a, s, vec![1; 10]);
    sim.run_for(Duration::from_secs(1));
    assert!(closed(&sim, a, s));
    assert!(closed(&sim, b, b_end));
    assert_eq!(stream_bytes(&sim, b, b_end), b"x");
    assert_eq!(
        sim.trace()
            .of_kind(TraceKind::Dropped(DropReason::RetransmitsExhausted))
            .count(),
        1
    );
    assert_eq!(sim.counters().stream_retransmits, 9);
    // New connections time out.
    let s2 = sim.connect_stream(a, sa("198.18.0.2:2000"));
    sim.run_for(Duration::from_secs(5));
    assert!(closed(&sim, a, s2));
    assert_eq!(opened(&sim, b).len(), 1);
    assert_eq!(sim.counters().streams_failed, 1);
}

#[test]
fn tcp_through_nat_gets_translated_source_and_releases_ports() {
    let mut sim = sim(6);
    let nat = sim.add_nat(
        "nat",
        "198.18.0.1".parse().unwrap(),
        NatConfig {
            port_allocation: natter_sim::PortAllocation::Sequential,
            port_range: 40000..=40001,
            ..NatConfig::symmetric()
        },
    );
    let alice = toy_behind(&mut sim, nat, "alice", "192.168.0.2:5000");
    let server = toy(&mut sim, "server", "198.18.5.5:443");
    let s1 = sim.connect_stream(alice, sa("198.18.5.5:443"));
    let s2 = sim.connect_stream(alice, sa("198.18.5.5:443"));
    let s3 = sim.connect_stream(alice, sa("198.18.5.5:443"));
    sim.run_for(Duration::from_secs(5));
    let remotes: Vec<u16> = opened(&sim, server).iter().map(|(_, r)| r.port()).collect();
    assert_eq!(remotes, vec![40000, 40001]);
    assert!(closed(&sim, alice, s3), "no port left");
    assert!(!closed(&sim, alice, s1) && !closed(&sim, alice, s2));
    sim.close_stream(alice, s1);
    let s4 = sim.connect_stream(alice, sa("198.18.5.5:443"));
    sim.run_for(Duration::from_secs(1));
    assert!(!closed(&sim, alice, s4));
    assert_eq!(opened(&sim, server).last().unwrap().1.port(), 40000);
}
