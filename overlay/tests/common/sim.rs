//! Helpers for the scenario tests that run the real node machines in the simulator
//! (`natter-sim`): a forced super node bound to every address it listens on.

use std::net::SocketAddr;

use std::time::Duration;

use natter_core::crypto::LocalIdentity;
use natter_core::overlay::HostCache;
use natter_core::testkit::{TestNetwork, TEST_WALL};
use natter_overlay::node::{Node, NodeConfig, NodeEvent, RolePolicy};
use natter_sim::{HostId, LinkConfig, NatConfig, Sim, SimConfig};

/// Adds a super node (forced role) running the real node machine, bound to every address its
/// STUN server needs, knowing the super nodes in `bootstrap`.
pub fn add_super_node(
    sim: &mut Sim<NodeEvent>,
    name: &str,
    identity: LocalIdentity,
    seed: [u8; 32],
    addr: SocketAddr,
    stun_alternate: Option<SocketAddr>,
    bootstrap: &HostCache,
) -> HostId {
    add_super_node_with(
        sim,
        name,
        identity,
        seed,
        addr,
        stun_alternate,
        bootstrap,
        |_| {},
    )
}

/// [`add_super_node`], with `tweak` applied to the node's configuration.
#[allow(clippy::too_many_arguments)]
pub fn add_super_node_with(
    sim: &mut Sim<NodeEvent>,
    name: &str,
    identity: LocalIdentity,
    seed: [u8; 32],
    addr: SocketAddr,
    stun_alternate: Option<SocketAddr>,
    bootstrap: &HostCache,
    tweak: impl FnOnce(&mut NodeConfig),
) -> HostId {
    let node = super_node_machine(sim, identity, seed, addr, stun_alternate, bootstrap, tweak);
    let mut addrs = node.bind_addresses();
    // And its TCP ports: the fallback pair (the simulator has no TLS; the transport layer
    // wraps the TLS port's streams, the node sees the same bytes).
    for (a, _) in node.tcp_listen_addresses() {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let h = sim.add_host(name, addrs[0], node);
    for a in &addrs[1..] {
        sim.bind(h, *a);
    }
    h
}

/// The machine of a super node (forced role) as [`add_super_node_with`] makes it, started at
/// the simulator's present: for a super node that restarts ([`Sim::restart`]).
#[allow(clippy::too_many_arguments)]
pub fn super_node_machine(
    sim: &Sim<NodeEvent>,
    identity: LocalIdentity,
    seed: [u8; 32],
    addr: SocketAddr,
    stun_alternate: Option<SocketAddr>,
    bootstrap: &HostCache,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Node {
    let start = sim.now();
    // The wall clock moves on with the simulator (a restart has a later incarnation).
    let wall = natter_core::crypto::UnixTime(TEST_WALL.0 + sim.elapsed().as_secs());
    let mut cfg = NodeConfig::new(identity, seed, wall, start, addr);
    cfg.role = RolePolicy::Force;
    cfg.stun_alternate = stun_alternate;
    cfg.host_cache = bootstrap.clone();
    tweak(&mut cfg);
    Node::new(cfg, start)
}

/// Super nodes in [`world`].
pub const SUPER_NODES: u8 = 5;

/// Five super nodes and eight users behind every kind of NAT (see [`world`]).
pub struct World {
    /// The simulator.
    pub sim: Sim<NodeEvent>,
    /// The super nodes `sn0`..`sn4`.
    pub sns: Vec<HostId>,
    /// The users `user0`..`user7`: open, full cone, port-restricted, symmetric, UDP blocked,
    /// open, restricted, port-restricted.
    pub users: Vec<HostId>,
}

/// The super nodes of [`world`], as a host cache.
pub fn world_bootstrap(seed: u64) -> HostCache {
    let net = TestNetwork::new(seed);
    let mut bootstrap = HostCache::new();
    for i in 0..SUPER_NODES {
        let key = net.identity(&format!("sn{i}")).device.dh_public();
        bootstrap.insert(
            SocketAddr::from(([198, 18, i, 10], 4000)),
            Some(key),
            TEST_WALL,
        );
    }
    bootstrap
}

/// The node of [`world`]'s user `i` (`user{i}`), started at `now`, when the wall clock says
/// `wall` (also to restart it: `TEST_WALL` plus the time since the world started).
pub fn user_node(
    seed: u64,
    i: usize,
    now: std::time::Instant,
    wall: natter_core::crypto::UnixTime,
    bootstrap: &HostCache,
) -> Node {
    let net = TestNetwork::new(seed);
    let addr = if [0, 5].contains(&i) {
        SocketAddr::from(([198, 18, 60, i as u8 + 1], 5000))
    } else {
        SocketAddr::from(([10, 0, 0, 2], 5000))
    };
    let mut cfg = NodeConfig::new(
        net.identity(&format!("user{i}")),
        [100 + i as u8; 32],
        wall,
        now,
        addr,
    );
    cfg.role = RolePolicy::Forbid;
    cfg.host_cache = bootstrap.clone();
    Node::new(cfg, now)
}

/// The world of the index and chat scenarios, seeded.
pub fn world(seed: u64) -> World {
    let mut sim: Sim<NodeEvent> = Sim::new(SimConfig {
        seed,
        internet: LinkConfig::with_latency(Duration::from_millis(30))
            .jitter(Duration::from_millis(10)),
        ..SimConfig::default()
    });
    let net = TestNetwork::new(seed);
    let sn_addr = |i: u8| SocketAddr::from(([198, 18, i, 10], 4000));
    let bootstrap = world_bootstrap(seed);
    let mut sns = Vec::new();
    for i in 0..SUPER_NODES {
        sns.push(add_super_node(
            &mut sim,
            &format!("sn{i}"),
            net.identity(&format!("sn{i}")),
            [i; 32],
            sn_addr(i),
            Some(SocketAddr::from(([198, 18, 100 + i, 10], 4001))),
            &bootstrap,
        ));
    }
    let nats = [
        None,
        Some(NatConfig::full_cone()),
        Some(NatConfig::port_restricted_cone()),
        Some(NatConfig::symmetric()),
        Some(NatConfig::udp_blocking_firewall()),
        None,
        Some(NatConfig::restricted_cone()),
        Some(NatConfig::port_restricted_cone()),
    ];
    let mut users = Vec::new();
    for (i, nat) in nats.into_iter().enumerate() {
        let name = format!("user{i}");
        let start = sim.now();
        let (addr, behind) = match nat {
            Some(cfg) => {
                let n = sim.add_nat(
                    &format!("nat-{name}"),
                    SocketAddr::from(([198, 18, 50, i as u8 + 1], 0)).ip(),
                    cfg,
                );
                (SocketAddr::from(([10, 0, 0, 2], 5000)), Some(n))
            }
            None => (SocketAddr::from(([198, 18, 60, i as u8 + 1], 5000)), None),
        };
        let node = user_node(seed, i, start, TEST_WALL, &bootstrap);
        users.push(match behind {
            Some(n) => sim.add_host_behind(n, &name, addr, node),
            None => sim.add_host(&name, addr, node),
        });
    }
    World { sim, sns, users }
}

/// The super node `host` is first attached to (the one it publishes through).
pub fn first_super_node(w: &World, host: HostId) -> HostId {
    let first = w.sim.machine::<Node>(host).attached()[0];
    let found = w.sns.iter().copied().find(|h| {
        (0..SUPER_NODES).any(|i| {
            w.sim.host_name(*h) == format!("sn{i}")
                && first == SocketAddr::from(([198, 18, i, 10], 4000))
        })
    });
    found.expect("attached to one of the super nodes")
}
