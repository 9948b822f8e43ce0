//! Building the topology and configuring links.

use super::*;

impl<E: 'static> Sim<E> {
    // ----------------------------------------------------------------------------------------
    // Topology
    // ----------------------------------------------------------------------------------------

    /// Adds a host on the public internet, bound to `addr`.
    ///
    /// # Panics
    ///
    /// If another node already uses `addr`'s IP on the internet.
    pub fn add_host<M>(&mut self, name: &str, addr: SocketAddr, machine: M) -> HostId
    where
        M: Machine<Event = E> + 'static,
    {
        self.add_host_in(Network::Internet, name, addr, machine)
    }

    /// Adds a host on the LAN behind `nat`, bound to the private address `addr`.
    ///
    /// # Panics
    ///
    /// If another node on that LAN already uses `addr`'s IP.
    pub fn add_host_behind<M>(
        &mut self,
        nat: NatId,
        name: &str,
        addr: SocketAddr,
        machine: M,
    ) -> HostId
    where
        M: Machine<Event = E> + 'static,
    {
        self.add_host_in(Network::Lan(nat), name, addr, machine)
    }

    /// Adds a host to `network`, bound to `addr`.
    ///
    /// # Panics
    ///
    /// If another node of `network` already uses `addr`'s IP.
    pub fn add_host_in<M>(
        &mut self,
        network: Network,
        name: &str,
        addr: SocketAddr,
        machine: M,
    ) -> HostId
    where
        M: Machine<Event = E> + 'static,
    {
        let id = HostId(self.hosts.len());
        self.claim_ip(network, addr.ip(), Node::Host(id));
        self.hosts.push(Host {
            name: name.to_owned(),
            network,
            addrs: vec![addr],
            machine: Box::new(machine),
            events: Vec::new(),
            timer: None,
            timer_gen: 0,
            udp_blocked: false,
            crashed: false,
            silent: false,
            next_ephemeral: EPHEMERAL_START,
            on_demand: Vec::new(),
        });
        // Pick up a timer the machine may already want.
        self.drain(id);
        id
    }

    /// Binds `host`'s machine to one more local address (another port, or another IP on the
    /// same network).
    ///
    /// # Panics
    ///
    /// If the IP belongs to another node of the host's network.
    pub fn bind(&mut self, host: HostId, addr: SocketAddr) {
        let network = self.hosts[host.0].network;
        self.claim_ip(network, addr.ip(), Node::Host(host));
        let addrs = &mut self.hosts[host.0].addrs;
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }

    /// Adds a NAT box whose external address `external_ip` is on the public internet.
    ///
    /// # Panics
    ///
    /// If another node already uses `external_ip` on the internet.
    pub fn add_nat(&mut self, name: &str, external_ip: IpAddr, config: NatConfig) -> NatId {
        self.add_nat_in(Network::Internet, name, external_ip, config)
    }

    /// Adds a NAT box whose external side is on the LAN of `parent` (carrier-grade NAT
    /// setups, double NAT).
    ///
    /// # Panics
    ///
    /// If another node on `parent`'s LAN already uses `external_ip`.
    pub fn add_nat_behind(
        &mut self,
        parent: NatId,
        name: &str,
        external_ip: IpAddr,
        config: NatConfig,
    ) -> NatId {
        self.add_nat_in(Network::Lan(parent), name, external_ip, config)
    }

    /// Adds a NAT box whose external side is on `network`.
    ///
    /// # Panics
    ///
    /// If another node of `network` already uses `external_ip`.
    pub fn add_nat_in(
        &mut self,
        network: Network,
        name: &str,
        external_ip: IpAddr,
        config: NatConfig,
    ) -> NatId {
        let id = NatId(self.nats.len());
        self.claim_ip(network, external_ip, Node::Nat(id));
        self.nats.push(Nat {
            name: name.to_owned(),
            network,
            lan: BTreeMap::new(),
            state: NatState::new(config, external_ip),
        });
        id
    }

    pub(super) fn claim_ip(&mut self, network: Network, ip: IpAddr, node: Node) {
        let nodes = match network {
            Network::Internet => &mut self.internet,
            Network::Lan(n) => &mut self.nats[n.0].lan,
        };
        match nodes.get(&ip) {
            Some(existing) if *existing != node => {
                panic!("{ip} is already used by {existing:?} on {network:?}")
            }
            _ => {
                nodes.insert(ip, node);
            }
        }
    }

    pub(super) fn nodes(&self, network: Network) -> &BTreeMap<IpAddr, Node> {
        match network {
            Network::Internet => &self.internet,
            Network::Lan(n) => &self.nats[n.0].lan,
        }
    }

    /// The hosts, in creation order.
    pub fn hosts(&self) -> impl Iterator<Item = HostId> + '_ {
        (0..self.hosts.len()).map(HostId)
    }

    /// The host called `name`, if any (the first one if several share it).
    pub fn host_by_name(&self, name: &str) -> Option<HostId> {
        self.hosts.iter().position(|h| h.name == name).map(HostId)
    }

    /// The name `host` was created with.
    pub fn host_name(&self, host: HostId) -> &str {
        &self.hosts[host.0].name
    }

    /// The addresses `host` is bound to; the first is its default source address.
    pub fn host_addrs(&self, host: HostId) -> &[SocketAddr] {
        &self.hosts[host.0].addrs
    }

    /// The network `host` is attached to.
    pub fn host_network(&self, host: HostId) -> Network {
        self.hosts[host.0].network
    }

    /// The name `nat` was created with.
    pub fn nat_name(&self, nat: NatId) -> &str {
        &self.nats[nat.0].name
    }

    /// The external IP of `nat`.
    pub fn nat_external_ip(&self, nat: NatId) -> IpAddr {
        self.nats[nat.0].state.external_ip()
    }

    /// The network the external side of `nat` is attached to.
    pub fn nat_network(&self, nat: NatId) -> Network {
        self.nats[nat.0].network
    }

    /// The configuration of `nat`.
    pub fn nat_config(&self, nat: NatId) -> &NatConfig {
        &self.nats[nat.0].state.config
    }

    /// Changes the configuration of `nat` from now on (existing mappings are kept).
    pub fn nat_config_mut(&mut self, nat: NatId) -> &mut NatConfig {
        &mut self.nats[nat.0].state.config
    }

    /// Makes `nat` forget its UDP mappings and tracking entries, as a router that restarts
    /// (or a carrier NAT that rebinds) does: hosts behind it get new external ports (unless it
    /// keeps source ports) the next time they send. Streams are kept.
    pub fn reset_nat_udp(&mut self, nat: NatId) {
        self.nats[nat.0].state.reset_udp();
    }

    /// Moves `nat` to a new external (public) address, as a router whose provider hands it a
    /// new lease does: it forgets its UDP mappings (they named the old address) and packets to
    /// the old address reach nobody. Streams are kept (a real one would lose them too; the
    /// scenarios that use this care about UDP).
    ///
    /// # Panics
    ///
    /// If another node of the NAT's network already uses `ip`.
    pub fn set_nat_external_ip(&mut self, nat: NatId, ip: IpAddr) {
        let network = self.nats[nat.0].network;
        let old = self.nats[nat.0].state.external_ip();
        self.claim_ip(network, ip, Node::Nat(nat));
        let nodes = match network {
            Network::Internet => &mut self.internet,
            Network::Lan(n) => &mut self.nats[n.0].lan,
        };
        nodes.remove(&old);
        self.nats[nat.0].state.set_external_ip(ip);
    }

    /// The live UDP mappings of `nat`, in external port order.
    pub fn nat_mappings(&self, nat: NatId) -> Vec<MappingInfo> {
        self.nats[nat.0].state.mappings(self.now)
    }

    /// Makes `host` drop every UDP datagram it sends or receives (a host firewall). Streams
    /// are unaffected.
    pub fn set_udp_blocked(&mut self, host: HostId, blocked: bool) {
        self.hosts[host.0].udp_blocked = blocked;
    }

    // ----------------------------------------------------------------------------------------
    // Links
    // ----------------------------------------------------------------------------------------

    /// Replaces the default link of the public internet.
    pub fn set_internet_link(&mut self, link: LinkConfig) {
        self.config.internet = link;
    }

    /// Replaces the LAN link of `nat` (between its hosts, and between them and the box).
    pub fn set_lan_link(&mut self, nat: NatId, link: LinkConfig) {
        self.nats[nat.0].state.config.lan_link = link;
    }

    /// Overrides the link between `a` and `b`, in both directions.
    ///
    /// The override applies where the two nodes' paths meet: both are walked up to their
    /// lowest common network (a host behind a NAT is represented on the internet by its NAT),
    /// and the link between the two attachment points there is replaced. So
    /// `set_link(alice, bob, ..)` with Alice and Bob behind different NATs changes the
    /// internet link between the two NATs (for every host behind them); with both on the
    /// same LAN it changes their direct LAN link; `set_link(alice, her_nat, ..)` changes
    /// Alice's link to her gateway.
    ///
    /// # Panics
    ///
    /// If both resolve to the same attachment point (e.g. a host and itself).
    pub fn set_link(&mut self, a: impl Into<Node>, b: impl Into<Node>, link: LinkConfig) {
        let key = self.resolve_pair(a.into(), b.into());
        self.links.insert(key, link);
    }

    /// Removes an override made with [`set_link`](Self::set_link).
    pub fn clear_link(&mut self, a: impl Into<Node>, b: impl Into<Node>) {
        let key = self.resolve_pair(a.into(), b.into());
        self.links.remove(&key);
    }

    /// Sets the access link of `node`: it is crossed, on top of the network's link, by
    /// everything the node sends or receives on its network (for a NAT: on its external
    /// side). Useful for "Alice is on lossy Wi-Fi".
    pub fn set_access_link(&mut self, node: impl Into<Node>, link: LinkConfig) {
        self.access.insert(node.into(), link);
    }

    /// Removes the access link of `node`.
    pub fn clear_access_link(&mut self, node: impl Into<Node>) {
        self.access.remove(&node.into());
    }

    /// The chain of (network, attachment point) from `node` up to the internet.
    pub(super) fn attachments(&self, node: Node) -> Vec<(Network, Node)> {
        let mut out = Vec::new();
        let mut network = match node {
            Node::Host(h) => self.hosts[h.0].network,
            Node::Nat(n) => {
                out.push((Network::Lan(n), node));
                self.nats[n.0].network
            }
        };
        let mut current = node;
        loop {
            out.push((network, current));
            match network {
                Network::Internet => return out,
                Network::Lan(n) => {
                    current = Node::Nat(n);
                    network = self.nats[n.0].network;
                }
            }
        }
    }

    pub(super) fn resolve_pair(&self, a: Node, b: Node) -> (Node, Node) {
        let chain_b = self.attachments(b);
        for (network, na) in self.attachments(a) {
            if let Some((_, nb)) = chain_b.iter().find(|(n, _)| *n == network) {
                assert!(
                    na != *nb,
                    "{a:?} and {b:?} share the attachment point {na:?}"
                );
                return ordered(na, *nb);
            }
        }
        unreachable!("every chain ends on the internet")
    }

    pub(super) fn access_link(&self, network: Network, node: Option<Node>) -> Option<LinkConfig> {
        let node = node?;
        let applies = match node {
            Node::Host(_) => true,
            Node::Nat(n) => self.nats[n.0].network == network,
        };
        if applies {
            self.access.get(&node).copied()
        } else {
            None
        }
    }

    /// The composition of the current links along `route`.
    pub(super) fn route_link(&self, route: &[Traversal]) -> LinkConfig {
        route.iter().fold(LinkConfig::IDEAL, |acc, t| {
            acc.then(&self.link_for(t.network, t.from, t.to))
        })
    }

    /// The link crossed by a packet from `from` to `to` on `network`: the composition of its
    /// [segments](Self::link_segments).
    pub(super) fn link_for(&self, network: Network, from: Option<Node>, to: Node) -> LinkConfig {
        let [up, core, down] = self.link_segments(network, from, to);
        let mut link = core.map_or(LinkConfig::IDEAL, |(_, l)| l);
        if let Some((_, a)) = up {
            link = a.then(&link);
        }
        if let Some((_, a)) = down {
            link = link.then(&a);
        }
        link
    }

    /// The segments a packet from `from` to `to` on `network` crosses, in order, each with the
    /// key of its loss chain: the sender's access link (upstream), the link between the two
    /// (an override, or the network's default), the receiver's access link (downstream).
    pub(super) fn link_segments(
        &self,
        network: Network,
        from: Option<Node>,
        to: Node,
    ) -> [Option<(LossChain, LinkConfig)>; 3] {
        let base = match network {
            Network::Internet => self.config.internet,
            Network::Lan(n) => self.nats[n.0].state.config.lan_link,
        };
        let core = from
            .and_then(|f| self.links.get(&ordered(f, to)).copied())
            .unwrap_or(base);
        [
            from.zip(self.access_link(network, from))
                .map(|(node, l)| (LossChain::Upstream(node), l)),
            Some((LossChain::Path { network, from, to }, core)),
            self.access_link(network, Some(to))
                .map(|l| (LossChain::Downstream(to), l)),
        ]
    }
}
