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

/// `count` super nodes on links like `link`, started `spacing` apart, whose host caches hold the
/// first three: the simulator, the test network, that bootstrap cache, and the nodes.
fn start_super_nodes(
    seed: u64,
    link: LinkConfig,
    count: usize,
    spacing: Duration,
) -> (Sim<NodeEvent>, TestNetwork, HostCache, Vec<(usize, HostId)>) {
    let mut sim: Sim<NodeEvent> = Sim::new(SimConfig {
        seed,
        internet: link,
        ..SimConfig::default()
    });
    let net = TestNetwork::new(seed);
    let mut bootstrap = HostCache::new();
    for i in 0..3 {
        let key = net.identity(&format!("sn{i}")).device.dh_public();
        bootstrap.insert(sn_addr(i), Some(key), TEST_WALL);
    }
    let mut live = Vec::new();
    for i in 0..count {
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
        sim.run_for(spacing);
    }
    (sim, net, bootstrap, live)
}

#[test]
fn sixty_super_nodes_learn_each_other_and_each_others_failures() {
    let link = LinkConfig::with_latency(Duration::from_millis(30))
        .jitter(Duration::from_millis(10))
        .loss(0.01);
    // They come up over a minute.
    let (mut sim, net, bootstrap, mut live) =
        start_super_nodes(31, link, SUPER_NODES, Duration::from_secs(1));
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

/// Issue 25's membership poisoning, by a certified user running a super node of its own
/// ("mallory", running the honest code, plus what it injects on its sessions): the
/// duplicate-key "alive" then "gone" of the report, a signed claim of its own key at the
/// victim's address then its signed departure, and a plain lie that the victim is gone. At
/// every moment of each phase every other view still holds the victim, and every ring counts
/// every super node.
#[test]
fn forged_membership_news_cannot_take_a_super_node_out_of_the_views() {
    use natter_core::sansio::Machine;
    use natter_core::wire::message::{HostEntry, MemberEvent, Message, MEMBER_CONTEXT};

    const N: usize = 8;
    let link = LinkConfig::with_latency(Duration::from_millis(20)).jitter(Duration::from_millis(5));
    // Super node N is Mallory's.
    let (mut sim, net, _, live) = start_super_nodes(25, link, N + 1, Duration::from_millis(500));
    sim.run_for(Duration::from_secs(30));
    assert_complete(&sim, &live, "before the attack");
    let mallory = live[N].1;
    let victim = 3;
    let victim_key = net.identity(&format!("sn{victim}")).device.dh_public();
    let victim_inc = sim
        .machine::<Node>(live[victim].1)
        .super_node()
        .expect("super node")
        .membership()
        .incarnation();
    let mallory_id = net.identity(&format!("sn{N}"));
    let elsewhere: SocketAddr = "198.18.200.10:4000".parse().unwrap();

    // Mallory sends `events` to every super node it has a session with.
    let inject = |sim: &mut Sim<NodeEvent>, events: Vec<MemberEvent>| {
        sim.with_machine::<Node, _>(mallory, |node, now| {
            let ep = node.endpoint();
            let conns: Vec<_> = ep
                .connections()
                .filter(|c| {
                    ep.remote(*c)
                        .and_then(|p| p.peer_udp())
                        .is_some_and(|a| (0..N).any(|i| sn_addr(i) == a))
                })
                .collect();
            for c in conns {
                let msg = Message::MemberUpdate {
                    sync: false,
                    events: events.clone(),
                };
                let _ = node.endpoint().send_control(now, c, &msg);
            }
            node.handle_timeout(now);
        });
    };
    // Every view but the victim's own holds the victim, and every ring is whole, at every
    // moment of the next 30 s.
    let watch = |sim: &mut Sim<NodeEvent>, phase: &str| {
        for step in 0..120 {
            sim.run_for(Duration::from_millis(250));
            for (i, h) in &live {
                if *i == victim {
                    continue;
                }
                let node = sim.machine::<Node>(*h);
                let role = node.super_node().expect("super node");
                assert!(
                    role.members()
                        .iter()
                        .any(|e| e.addr == sn_addr(victim) && e.static_key == victim_key),
                    "{phase}: super node {i} lost the victim after {} ms",
                    (step + 1) * 250
                );
                assert_eq!(node.ring_len(), N + 1, "{phase}: super node {i}'s ring");
            }
        }
    };
    let unsigned =
        |alive: bool, incarnation: u32, addr: SocketAddr, static_key: [u8; 32]| MemberEvent {
            alive,
            incarnation,
            entry: HostEntry { addr, static_key },
            signature: None,
        };
    let signed_by_mallory = |alive: bool, incarnation: u32, addr: SocketAddr| {
        let ev = unsigned(alive, incarnation, addr, mallory_id.device.dh_public());
        MemberEvent {
            signature: Some(mallory_id.device.sign(MEMBER_CONTEXT, &ev.signed_bytes())),
            ..ev
        }
    };

    // 1. The report's attack: the victim's key "alive" at another address, then "gone" there.
    inject(
        &mut sim,
        vec![unsigned(true, victim_inc, elsewhere, victim_key)],
    );
    sim.run_for(Duration::from_secs(1));
    inject(
        &mut sim,
        vec![unsigned(false, victim_inc, elsewhere, victim_key)],
    );
    watch(&mut sim, "duplicate key alive then gone");

    // 2. Mallory's own key, signed, at the victim's address; then its signed departure there.
    inject(
        &mut sim,
        vec![signed_by_mallory(true, victim_inc + 10, sn_addr(victim))],
    );
    sim.run_for(Duration::from_secs(1));
    inject(
        &mut sim,
        vec![signed_by_mallory(false, victim_inc + 10, sn_addr(victim))],
    );
    watch(&mut sim, "signed rebinding of the victim's address");

    // 3. A plain lie: the victim is gone.
    inject(
        &mut sim,
        vec![unsigned(false, victim_inc, sn_addr(victim), victim_key)],
    );
    watch(&mut sim, "the victim reported gone");

    // 4. Replays of the victim's own signed words from a former address: an old departure,
    //    then an old "alive" there.
    let victim_id = net.identity(&format!("sn{victim}"));
    let signed_by_victim = |alive: bool, incarnation: u32, addr: SocketAddr| {
        let ev = unsigned(alive, incarnation, addr, victim_key);
        MemberEvent {
            signature: Some(victim_id.device.sign(MEMBER_CONTEXT, &ev.signed_bytes())),
            ..ev
        }
    };
    inject(
        &mut sim,
        vec![
            signed_by_victim(false, victim_inc - 5, elsewhere),
            signed_by_victim(true, victim_inc - 3, elsewhere),
        ],
    );
    watch(&mut sim, "replayed old words of the victim");

    // 5. The victim told it is gone at an incarnation far in the future: it must not refute
    //    to there (nobody would accept its words again).
    inject(
        &mut sim,
        vec![unsigned(false, u32::MAX - 1, sn_addr(victim), victim_key)],
    );
    watch(&mut sim, "a report from the far future");
    let inc_now = sim
        .machine::<Node>(live[victim].1)
        .super_node()
        .expect("super node")
        .membership()
        .incarnation();
    assert!(
        inc_now < victim_inc + 1_000,
        "the victim's incarnation jumped to {inc_now}"
    );

    // What the honest super nodes counted.
    let (mut unsigned_dropped, mut held, mut hints) = (0, 0, 0);
    for (i, h) in &live[..N] {
        if *i == victim {
            continue;
        }
        let s = sim
            .machine::<Node>(*h)
            .super_node()
            .expect("super node")
            .membership()
            .stats();
        unsigned_dropped += s.unsigned;
        held += s.rebinds_refused;
        hints += s.hints;
    }
    eprintln!(
        "FORGED MEMBERSHIP: {unsigned_dropped} unsigned alive dropped, {held} rebindings \
         refused, {hints} reports checked"
    );
    assert!(unsigned_dropped > 0 && held > 0 && hints > 0);
    assert_complete(&sim, &live, "after the attack");
}

/// Same seed, same run, in one process as across processes: nothing in a node may depend on
/// the order of a std `HashMap` (its keys are random per map), or the simulator's seeded
/// losses hit other packets and a test passes or fails by luck. Sixty-node runs failed once
/// in CI that way; two runs here differed at the first digest before the overlay's state
/// moved to ordered maps.
#[test]
fn a_super_node_network_runs_the_same_twice() {
    let run = || {
        let link = LinkConfig::with_latency(Duration::from_millis(30))
            .jitter(Duration::from_millis(10))
            .loss(0.01);
        let (mut sim, _, _, live) = start_super_nodes(31, link, 12, Duration::from_secs(1));
        sim.run_for(Duration::from_secs(30));
        let joined = sim.digest();
        let (_, leaving) = live[5];
        sim.with_machine::<Node, _>(leaving, |node, now| node.demote(now));
        sim.run_for(Duration::from_secs(10));
        (joined, sim.digest())
    };
    assert_eq!(run(), run());
}
