//! Datagrams: sending, injection, routing, links and NAT traversal.

use super::*;

impl<E: 'static> Sim<E> {
    // ----------------------------------------------------------------------------------------
    // Datagrams
    // ----------------------------------------------------------------------------------------

    pub(super) fn on_transmit(&mut self, host: HostId, t: Transmit) {
        match t.destination {
            Destination::Udp(dst) => {
                self.send_datagram(host, t.source, dst, t.payload, t.ttl.unwrap_or(MAX_TTL))
            }
            Destination::Stream(id) => {
                let id = self.sim_stream(host, id);
                self.stream_write(host, id, t.payload)
            }
        }
    }

    pub(super) fn send_datagram(
        &mut self,
        host: HostId,
        source: Option<SocketAddr>,
        dst: SocketAddr,
        payload: Bytes,
        ttl: u8,
    ) {
        let h = &self.hosts[host.0];
        let default_src = h.addrs[0];
        let src = match source {
            Some(s) if h.addrs.contains(&s) => s,
            Some(s) => {
                self.record(
                    TraceKind::Dropped(DropReason::BadSource),
                    Protocol::Udp,
                    s,
                    dst,
                    payload.len(),
                );
                return;
            }
            None => default_src,
        };
        let network = h.network;
        let blocked = h.udp_blocked;
        self.record(TraceKind::Sent, Protocol::Udp, src, dst, payload.len());
        self.capture(CapturePoint::Sent, Some(host), src, dst, &payload);
        let mut payload = payload;
        if let Some(f) = self.interceptor.as_mut() {
            let seen = Captured {
                at: self.now,
                point: CapturePoint::Sent,
                host: Some(host),
                src,
                dst,
                payload: payload.clone(),
            };
            match f(&seen) {
                Verdict::Pass => {}
                Verdict::Drop => {
                    self.record(
                        TraceKind::Dropped(DropReason::Intercepted),
                        Protocol::Udp,
                        src,
                        dst,
                        payload.len(),
                    );
                    return;
                }
                Verdict::Replace(b) => payload = b,
            }
        }
        let packet = Packet {
            src,
            dst,
            body: Body::Datagram(payload),
            ttl,
        };
        if blocked {
            self.drop_packet(&packet, DropReason::Firewall);
            return;
        }
        self.transmit_in(network, Some(Node::Host(host)), packet);
    }

    /// Puts a datagram on the wire as if `from` had sent it, bypassing any machine, host
    /// firewall and the interceptor; NATs and links treat it normally.
    ///
    /// It enters the network that owns `from`'s IP: the internet if a public node has it,
    /// otherwise the LAN of the first host bound to that IP, otherwise (a spoofed address)
    /// the internet. Use [`inject_datagram_in`](Self::inject_datagram_in) to choose.
    pub fn inject_datagram(&mut self, from: SocketAddr, to: SocketAddr, payload: impl Into<Bytes>) {
        let (network, node) = if let Some(node) = self.internet.get(&from.ip()) {
            (Network::Internet, Some(*node))
        } else if let Some(i) = self
            .hosts
            .iter()
            .position(|h| h.addrs.iter().any(|a| a.ip() == from.ip()))
        {
            (self.hosts[i].network, Some(Node::Host(HostId(i))))
        } else {
            (Network::Internet, None)
        };
        self.inject(network, node, from, to, payload.into());
    }

    /// Puts a datagram on the wire of `network` with source `from` (which need not exist).
    pub fn inject_datagram_in(
        &mut self,
        network: Network,
        from: SocketAddr,
        to: SocketAddr,
        payload: impl Into<Bytes>,
    ) {
        let node = self.nodes(network).get(&from.ip()).copied();
        self.inject(network, node, from, to, payload.into());
    }

    pub(super) fn inject(
        &mut self,
        network: Network,
        node: Option<Node>,
        from: SocketAddr,
        to: SocketAddr,
        payload: Bytes,
    ) {
        self.record(TraceKind::Injected, Protocol::Udp, from, to, payload.len());
        self.capture(CapturePoint::Injected, None, from, to, &payload);
        let packet = Packet {
            src: from,
            dst: to,
            body: Body::Datagram(payload),
            ttl: MAX_TTL,
        };
        self.transmit_in(network, node, packet);
    }

    pub(super) fn route(&self, network: Network, dst: IpAddr) -> Option<(Hop, Node)> {
        match self.nodes(network).get(&dst) {
            Some(Node::Host(h)) => Some((Hop::Host(*h), Node::Host(*h))),
            Some(Node::Nat(n)) => Some((Hop::NatOutside(*n), Node::Nat(*n))),
            None => match network {
                // Off-LAN (including the NAT's own external address): via the gateway.
                Network::Lan(n) => Some((Hop::NatInside(n), Node::Nat(n))),
                Network::Internet => None,
            },
        }
    }

    pub(super) fn sample_delay(&mut self, link: &LinkConfig) -> Duration {
        link.delay(&mut self.rng)
    }

    /// Whether a datagram from `from` to `to` on `network` is lost. Without bursty segments
    /// that is one draw against the composed loss `link`; otherwise the datagram crosses the
    /// segments in order, each stepping its own chain, until one loses it.
    fn datagram_lost(
        &mut self,
        network: Network,
        from: Option<Node>,
        to: Node,
        link: &LinkConfig,
    ) -> bool {
        let segments = self.link_segments(network, from, to);
        if !segments.iter().flatten().any(|(_, l)| l.is_bursty()) {
            return self.rng.chance(link.loss);
        }
        for (key, segment) in segments.into_iter().flatten() {
            let bad = self.loss_chains.entry(key).or_insert(false);
            if segment.lose(bad, &mut self.rng) {
                return true;
            }
        }
        false
    }

    /// The delay of a reliable transfer over `link`: each loss costs a retransmission
    /// timeout (doubling). `None` if the segment is lost more than `max_retransmits` times.
    pub(super) fn reliable_delay(&mut self, link: &LinkConfig) -> Option<Duration> {
        let mut extra = Duration::ZERO;
        let mut rto = self.config.stream.rto;
        for _ in 0..=self.config.stream.max_retransmits {
            if !self.rng.chance(link.loss) {
                return Some(extra + self.sample_delay(link));
            }
            self.trace.counters_mut().stream_retransmits += 1;
            extra += rto;
            rto = rto.saturating_mul(2);
        }
        None
    }

    /// A router forwards `packet`: its TTL goes down by one, and a packet that arrived with
    /// TTL 1 (or 0) dies here (returns false, after recording the drop).
    ///
    /// The routers are the NAT boxes (in either direction) and the internet, which counts as
    /// one hop; hosts on one LAN reach each other without a router. So a datagram sent with
    /// TTL 2 by a host behind one NAT crosses its NAT (which maps it) and dies in the internet,
    /// before the far NAT sees it.
    fn cross_router(&mut self, packet: &mut Packet) -> bool {
        if packet.ttl <= 1 {
            self.drop_packet(packet, DropReason::TtlExpired);
            return false;
        }
        packet.ttl -= 1;
        true
    }

    /// Sends `packet` across `network` from `from` towards its destination.
    pub(super) fn transmit_in(&mut self, network: Network, from: Option<Node>, mut packet: Packet) {
        if network == Network::Internet && !self.cross_router(&mut packet) {
            return;
        }
        let Some((hop, to)) = self.route(network, packet.dst.ip()) else {
            self.drop_packet(&packet, DropReason::NoRoute);
            return;
        };
        let link = self.link_for(network, from, to);
        let now = self.now;
        match &mut packet.body {
            Body::Datagram(_) => {
                if self.datagram_lost(network, from, to, &link) {
                    self.drop_packet(&packet, DropReason::Loss);
                    return;
                }
                let delay = self.sample_delay(&link);
                if self.rng.chance(link.duplicate) {
                    let delay2 = self.sample_delay(&link);
                    self.record(
                        TraceKind::Duplicated,
                        Protocol::Udp,
                        packet.src,
                        packet.dst,
                        packet.len(),
                    );
                    self.schedule(
                        now + delay2,
                        Action::Arrive {
                            hop,
                            packet: packet.clone(),
                        },
                    );
                }
                self.schedule(now + delay, Action::Arrive { hop, packet });
            }
            Body::Syn { route, .. } => match self.reliable_delay(&link) {
                Some(delay) => {
                    route.push(Traversal { network, from, to });
                    self.schedule(now + delay, Action::Arrive { hop, packet });
                }
                None => self.drop_packet(&packet, DropReason::RetransmitsExhausted),
            },
        }
    }

    pub(super) fn drop_packet(&mut self, packet: &Packet, reason: DropReason) {
        self.record(
            TraceKind::Dropped(reason),
            packet.protocol(),
            packet.src,
            packet.dst,
            packet.len(),
        );
        if let Body::Syn {
            stream, sent_at, ..
        } = packet.body
        {
            let at = self.now.max(sent_at + self.config.stream.connect_timeout);
            self.schedule(at, Action::StreamFailed { stream });
        }
    }

    pub(super) fn arrive_host(&mut self, host: HostId, packet: Packet) {
        let h = &self.hosts[host.0];
        let bound = h.addrs.contains(&packet.dst) && !h.crashed;
        match packet.body {
            Body::Datagram(ref data) => {
                if h.udp_blocked {
                    self.drop_packet(&packet, DropReason::Firewall);
                    return;
                }
                if !bound {
                    self.drop_packet(&packet, DropReason::NoSocket);
                    return;
                }
                self.record(
                    TraceKind::Delivered,
                    Protocol::Udp,
                    packet.src,
                    packet.dst,
                    data.len(),
                );
                self.capture(
                    CapturePoint::Delivered,
                    Some(host),
                    packet.src,
                    packet.dst,
                    data,
                );
                self.deliver(
                    host,
                    Input::Datagram {
                        source: packet.src,
                        local: packet.dst,
                        data,
                    },
                );
            }
            // A powered-off host sends no reset: the attempt times out.
            Body::Syn { .. } if h.silent => self.drop_packet(&packet, DropReason::NoRoute),
            Body::Syn { stream, route, .. } => {
                self.stream_syn_arrived(host, stream, packet.src, packet.dst, route, bound)
            }
        }
    }

    pub(super) fn nat_outbound(&mut self, nat: NatId, mut packet: Packet) {
        if !self.cross_router(&mut packet) {
            return;
        }
        let now = self.now;
        let n = &mut self.nats[nat.0];
        let external_ip = n.state.external_ip();
        let hairpin = packet.dst.ip() == external_ip;
        let firewalled = match packet.body {
            Body::Datagram(_) => n.state.config.block_udp,
            Body::Syn { .. } => n
                .state
                .config
                .tcp_ports
                .as_ref()
                .is_some_and(|ports| !ports.contains(&packet.dst.port())),
        };
        if firewalled {
            self.drop_packet(&packet, DropReason::Firewall);
            return;
        }
        if hairpin && !n.state.config.hairpinning {
            self.drop_packet(&packet, DropReason::NatHairpinDisabled);
            return;
        }
        let port = match packet.body {
            Body::Datagram(_) => n
                .state
                .outbound_udp(now, packet.src, packet.dst, &mut self.rng),
            Body::Syn { stream, .. } => {
                let r = n.state.allocate_tcp(packet.src.port(), &mut self.rng);
                if let (Ok(p), Some(end)) = (r, self.streams.get_mut(&stream)) {
                    end.nat_ports.push((nat, p));
                }
                r
            }
        };
        let port = match port {
            Ok(p) => p,
            Err(refusal) => {
                self.drop_packet(&packet, refusal_reason(refusal));
                return;
            }
        };
        packet.src = SocketAddr::new(external_ip, port);
        self.record(
            TraceKind::Translated,
            packet.protocol(),
            packet.src,
            packet.dst,
            packet.len(),
        );
        if hairpin {
            // Turned around inside the box: one router hop in all.
            self.nat_translate_inbound(nat, packet);
        } else {
            let network = self.nats[nat.0].network;
            self.transmit_in(network, Some(Node::Nat(nat)), packet);
        }
    }

    pub(super) fn nat_inbound(&mut self, nat: NatId, mut packet: Packet) {
        if self.cross_router(&mut packet) {
            self.nat_translate_inbound(nat, packet);
        }
    }

    fn nat_translate_inbound(&mut self, nat: NatId, mut packet: Packet) {
        let now = self.now;
        let n = &mut self.nats[nat.0];
        match packet.body {
            Body::Datagram(_) => {
                if n.state.config.block_udp {
                    self.drop_packet(&packet, DropReason::Firewall);
                    return;
                }
                match n.state.inbound_udp(now, packet.src, packet.dst.port()) {
                    Ok(internal) => {
                        packet.dst = internal;
                        self.record(
                            TraceKind::Translated,
                            Protocol::Udp,
                            packet.src,
                            packet.dst,
                            packet.len(),
                        );
                        self.transmit_in(Network::Lan(nat), Some(Node::Nat(nat)), packet);
                    }
                    Err(refusal) => self.drop_packet(&packet, refusal_reason(refusal)),
                }
            }
            // Inbound TCP connections never cross a NAT.
            Body::Syn { .. } => self.drop_packet(&packet, DropReason::NatFiltered),
        }
    }
}

fn refusal_reason(r: NatRefusal) -> DropReason {
    match r {
        NatRefusal::NoMapping => DropReason::NatNoMapping,
        NatRefusal::Filtered => DropReason::NatFiltered,
        NatRefusal::PortsExhausted => DropReason::NatPortsExhausted,
    }
}
