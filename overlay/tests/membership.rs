//! Super-node membership through the real node machines, in the simulator: sixty super nodes
//! that start knowing only three of them come to know every other; when five crash at once
//! every live view drops them; a new super node is known by all soon after it starts; one
//! that demotes itself says so and is dropped without waiting for probes to miss it. Seeded and in virtual time.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use natter_core::overlay::HostCache;
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_overlay::node::{Node, NodeEvent};
use natter_sim::{HostId, LinkConfig, Sim, SimConfig};

const SUPER_NODES: usize = 60;

fn sn_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, i as u8, 10], 4000))
}

fn views(sim: &Sim<NodeEvent>, live: &[(usize, HostId)]) -> Vec<(usize, Vec<SocketAddr>)> {
    live.iter()
        .map(|(i, h)| {
            let node = sim.machine::<Node>(*h);
            let role = node.super_node().expect("a super node");
            (*i, role.members().iter().map(|e| e.addr).collect())
        })
        .collect()
}

/// Every live super node knows exactly the other live ones.
fn assert_complete(sim: &Sim<NodeEvent>, live: &[(usize, HostId)], when: &str) {
    let mut expected: Vec<SocketAddr> = live.iter().map(|(i, _)| sn_addr(*i)).collect();
    expected.sort();
    for (i, view) in views(sim, live) {
        let mut want = expected.clone();
        want.retain(|a| *a != sn_addr(i));
        assert_eq!(view, want, "{when}: super node {i}'s view");
    }
}

#[test]
fn sixty_super_nodes_learn_each_other_and_each_others_failures() {
    let mut sim: Sim<NodeEvent> = Sim::new(SimConfig {
        seed: 31,
        internet: LinkConfig::with_latency(Duration::from_millis(30))
            .jitter(Duration::from_millis(10))
            .loss(0.01),
        ..SimConfig::default()
    });
    let net = TestNetwork::new(31);
    // Everyone's host cache holds only the first three.
    let mut bootstrap = HostCache::new();
    for i in 0..3 {
        let key = net.identity(&format!("sn{i}")).device.dh_public();
        bootstrap.insert(sn_addr(i), Some(key), TEST_WALL);
    }
    let mut live: Vec<(usize, HostId)> = Vec::new();
    for i in 0..SUPER_NODES {
        let h = common::sim::add_super_node(
            &mut sim,
            &format!("sn{i}"),
            net.identity(&format!("sn{i}")),
            [i as u8; 32],
            sn_addr(i),
            None,
            &bootstrap,
        );
        live.push((i, h));
        // They come up over a minute.
        sim.run_for(Duration::from_secs(1));
    }
    sim.run_for(Duration::from_secs(60));
    assert_complete(&sim, &live, "two minutes after the first started");
    for (_, h) in &live {
        assert_eq!(
            sim.machine::<Node>(*h).ring_len(),
            SUPER_NODES,
            "index ring"
        );
    }

    // Five crash at once, without a word: their ring predecessors' probes find them gone.
    let crashed: Vec<(usize, HostId)> = live.iter().copied().filter(|(i, _)| i % 12 == 5).collect();
    for (_, h) in &crashed {
        sim.crash(*h);
    }
    live.retain(|l| !crashed.contains(l));
    sim.run_for(Duration::from_secs(40));
    assert_complete(&sim, &live, "40 s after five crashed");

    // A new super node, knowing the same three, is known by every other soon after.
    let n = SUPER_NODES;
    let h = common::sim::add_super_node(
        &mut sim,
        &format!("sn{n}"),
        net.identity(&format!("sn{n}")),
        [n as u8; 32],
        sn_addr(n),
        None,
        &bootstrap,
    );
    live.push((n, h));
    sim.run_for(Duration::from_secs(20));
    assert_complete(&sim, &live, "20 s after a new one started");

    // One gives the role up: it says so (probes would take 8 s to notice, then gossip).
    let (_, leaving) = live[10];
    sim.with_machine::<Node, _>(leaving, |node, now| node.demote(now));
    live.remove(10);
    sim.run_for(Duration::from_secs(10));
    assert_complete(&sim, &live, "10 s after one demoted itself");

    // Nobody running was ever declared gone for long: every live view is complete, and the
    // protocol's own counters show no refutation was needed beyond the losses' few.
    let refuted: u64 = live
        .iter()
        .map(|(_, h)| {
            let role = sim.machine::<Node>(*h).super_node().expect("super node");
            role.membership().stats().refuted
        })
        .sum();
    assert!(refuted <= 2, "{refuted} refutations");
}
