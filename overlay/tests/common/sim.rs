//! Helpers for the scenario tests that run the real node machines in the simulator
//! (`natter-sim`): a forced super node bound to every address it listens on.

use std::net::SocketAddr;

use natter_core::crypto::LocalIdentity;
use natter_core::overlay::HostCache;
use natter_core::testkit::TEST_WALL;
use natter_overlay::node::{Node, NodeConfig, NodeEvent, RolePolicy};
use natter_sim::{HostId, Sim};

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
