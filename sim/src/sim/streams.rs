//! Reliable streams.

use super::*;

impl<E: 'static> Sim<E> {
    // ----------------------------------------------------------------------------------------
    // Streams
    // ----------------------------------------------------------------------------------------

    /// Opens a reliable stream from `host` to `remote`, from the host's first IP and a fresh
    /// ephemeral port. See [`connect_stream_from`](Self::connect_stream_from).
    pub fn connect_stream(&mut self, host: HostId, remote: SocketAddr) -> StreamId {
        let ip = self.hosts[host.0].addrs[0].ip();
        self.connect_stream_from(host, SocketAddr::new(ip, 0), remote)
    }

    /// Opens a reliable stream from `local` on `host` to `remote` and returns the id of the
    /// local end, which the application hands to its machine. Port 0 picks an ephemeral port.
    ///
    /// The machine may write to the stream at once; writes are buffered until the remote
    /// accepts. A connection attempt crosses the network like a datagram (NATs let it out but
    /// never in; UDP firewalls let it through). If it reaches a host bound to `remote`, that
    /// host accepts it: its machine learns about the new stream from an
    /// [`Input::StreamOpened`] with a new [`StreamId`], delivered on arrival; the opening side
    /// gets [`Input::StreamOpened`] when the handshake completes.
    /// If it reaches a host with no such socket, the local machine gets
    /// [`Input::StreamClosed`] one trip later; if it is dropped on the way, after
    /// [`StreamConfig::connect_timeout`](crate::StreamConfig::connect_timeout).
    ///
    /// # Panics
    ///
    /// If `local`'s IP is not one of `host`'s.
    pub fn connect_stream_from(
        &mut self,
        host: HostId,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> StreamId {
        let h = &mut self.hosts[host.0];
        assert!(
            h.addrs.iter().any(|a| a.ip() == local.ip()),
            "{host:?} has no address {}",
            local.ip()
        );
        let local = if local.port() == 0 {
            let port = h.next_ephemeral;
            h.next_ephemeral = if port == u16::MAX {
                EPHEMERAL_START
            } else {
                port + 1
            };
            SocketAddr::new(local.ip(), port)
        } else {
            local
        };
        let network = h.network;
        let id = self.alloc_stream();
        let now = self.now;
        self.streams.insert(
            id,
            StreamEnd {
                host,
                local,
                remote,
                peer: None,
                status: StreamStatus::Connecting,
                notified: false,
                pending: Vec::new(),
                route: Vec::new(),
                last_delivery: now,
                nat_ports: Vec::new(),
            },
        );
        self.record(TraceKind::StreamConnect, Protocol::Tcp, local, remote, 0);
        let packet = Packet {
            src: local,
            dst: remote,
            body: Body::Syn {
                stream: id,
                sent_at: now,
                route: Vec::new(),
            },
            ttl: MAX_TTL,
        };
        self.transmit_in(network, Some(Node::Host(host)), packet);
        id
    }

    /// Closes `host`'s end of `stream`: its machine gets [`Input::StreamClosed`] right away,
    /// the peer's machine after every byte already written has arrived. Returns `false` if
    /// the stream is unknown, belongs to another host, or was already closed and reported.
    pub fn close_stream(&mut self, host: HostId, stream: StreamId) -> bool {
        let now = self.now;
        let Some(end) = self.streams.get_mut(&stream) else {
            return false;
        };
        if end.host != host || end.notified {
            return false;
        }
        let was = end.status;
        end.status = StreamStatus::Closed;
        end.notified = true;
        let (local, remote, peer, last) = (end.local, end.remote, end.peer, end.last_delivery);
        let link = self.route_link(&self.streams[&stream].route);
        self.record(TraceKind::StreamClose, Protocol::Tcp, local, remote, 0);
        if was == StreamStatus::Open {
            if let Some(peer) = peer {
                let d = self.reliable_delay(&link).unwrap_or(link.latency);
                self.schedule((now + d).max(last), Action::StreamFin { stream: peer });
            }
        }
        // A stream closed while connecting sends its FIN once established.
        self.release_nat_ports(stream);
        self.deliver(host, Input::StreamClosed { stream });
        true
    }

    /// A snapshot of one stream end.
    pub fn stream_info(&self, stream: StreamId) -> Option<StreamInfo> {
        self.streams.get(&stream).map(StreamEnd::info)
    }

    /// The stream ends owned by `host`, in id order.
    pub fn streams_of(&self, host: HostId) -> Vec<StreamId> {
        self.streams
            .iter()
            .filter(|(_, e)| e.host == host)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(super) fn alloc_stream(&mut self) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        id
    }

    pub(super) fn release_nat_ports(&mut self, stream: StreamId) {
        let peer = self.streams.get(&stream).and_then(|e| e.peer);
        for id in [Some(stream), peer].into_iter().flatten() {
            if let Some(end) = self.streams.get_mut(&id) {
                for (nat, port) in std::mem::take(&mut end.nat_ports) {
                    self.nats[nat.0].state.release_tcp(port);
                }
            }
        }
    }

    pub(super) fn stream_syn_arrived(
        &mut self,
        host: HostId,
        initiator: StreamId,
        src: SocketAddr,
        dst: SocketAddr,
        route: Vec<Traversal>,
        bound: bool,
    ) {
        let now = self.now;
        let link = self.route_link(&route);
        if !bound {
            // Refused: the reset travels back.
            self.record(
                TraceKind::Dropped(DropReason::NoSocket),
                Protocol::Tcp,
                src,
                dst,
                0,
            );
            let d = self.reliable_delay(&link).unwrap_or(link.latency);
            self.schedule(now + d, Action::StreamFailed { stream: initiator });
            return;
        }
        let id = self.alloc_stream();
        self.streams.insert(
            id,
            StreamEnd {
                host,
                local: dst,
                remote: src,
                peer: Some(initiator),
                status: StreamStatus::Open,
                notified: false,
                pending: Vec::new(),
                route: route.clone(),
                last_delivery: now,
                nat_ports: Vec::new(),
            },
        );
        self.record(TraceKind::StreamAccept, Protocol::Tcp, src, dst, 0);
        match self.reliable_delay(&link) {
            Some(d) => {
                self.schedule(
                    now + d,
                    Action::StreamEstablished {
                        stream: initiator,
                        peer: id,
                        route,
                    },
                );
                // Data from the acceptor must not overtake the handshake.
                if let Some(end) = self.streams.get_mut(&id) {
                    end.last_delivery = now + d;
                }
            }
            None => {
                let at = now + self.config.stream.connect_timeout;
                self.schedule(at, Action::StreamFailed { stream: initiator });
                self.reset(id, at);
            }
        }
        self.deliver(
            host,
            Input::StreamOpened {
                stream: id,
                remote: src,
            },
        );
    }

    /// Closes `stream` (not its peer) at once and tells its machine at `at`.
    pub(super) fn reset(&mut self, stream: StreamId, at: Duration) {
        if let Some(end) = self.streams.get_mut(&stream) {
            end.status = StreamStatus::Closed;
            self.schedule(at, Action::StreamFin { stream });
        }
    }

    pub(super) fn stream_established(
        &mut self,
        stream: StreamId,
        peer: StreamId,
        route: Vec<Traversal>,
    ) {
        let now = self.now;
        let Some(end) = self.streams.get_mut(&stream) else {
            return;
        };
        end.peer = Some(peer);
        end.route = route;
        end.last_delivery = now;
        let closed = end.status == StreamStatus::Closed;
        if !closed {
            end.status = StreamStatus::Open;
        }
        let pending = std::mem::take(&mut end.pending);
        let (host, remote) = (end.host, end.remote);
        for data in pending {
            self.send_segment(stream, data);
        }
        if !closed {
            self.deliver(host, Input::StreamOpened { stream, remote });
        }
        if closed {
            // Closed by the application while connecting: finish the handshake with a FIN.
            let last = self.streams[&stream].last_delivery;
            let link = self.route_link(&self.streams[&stream].route);
            let d = self.reliable_delay(&link).unwrap_or(link.latency);
            self.schedule((now + d).max(last), Action::StreamFin { stream: peer });
        }
    }

    pub(super) fn stream_failed(&mut self, stream: StreamId) {
        let Some(end) = self.streams.get_mut(&stream) else {
            return;
        };
        if end.notified {
            return;
        }
        end.status = StreamStatus::Closed;
        end.notified = true;
        end.pending.clear();
        let (host, local, remote) = (end.host, end.local, end.remote);
        self.record(TraceKind::StreamFailed, Protocol::Tcp, local, remote, 0);
        self.release_nat_ports(stream);
        self.deliver(host, Input::StreamClosed { stream });
    }

    pub(super) fn stream_write(&mut self, host: HostId, stream: StreamId, data: Bytes) {
        let Some(end) = self.streams.get_mut(&stream).filter(|e| e.host == host) else {
            let src = self.hosts[host.0].addrs[0];
            let dst = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            self.record(
                TraceKind::Dropped(DropReason::UnknownStream),
                Protocol::Tcp,
                src,
                dst,
                data.len(),
            );
            return;
        };
        let (local, remote, status) = (end.local, end.remote, end.status);
        match status {
            StreamStatus::Closed => {
                self.record(
                    TraceKind::Dropped(DropReason::StreamClosed),
                    Protocol::Tcp,
                    local,
                    remote,
                    data.len(),
                );
            }
            StreamStatus::Connecting => {
                end.pending.push(data.clone());
                self.record(TraceKind::Sent, Protocol::Tcp, local, remote, data.len());
            }
            StreamStatus::Open => {
                self.record(TraceKind::Sent, Protocol::Tcp, local, remote, data.len());
                self.send_segment(stream, data);
            }
        }
    }

    pub(super) fn send_segment(&mut self, stream: StreamId, data: Bytes) {
        let now = self.now;
        let end = &self.streams[&stream];
        let (peer, last, local, remote) = (end.peer, end.last_delivery, end.local, end.remote);
        let Some(peer) = peer else {
            return;
        };
        let link = self.route_link(&end.route);
        match self.reliable_delay(&link) {
            Some(d) => {
                let at = (now + d).max(last);
                if let Some(end) = self.streams.get_mut(&stream) {
                    end.last_delivery = at;
                }
                self.schedule(at, Action::StreamData { stream: peer, data });
            }
            None => {
                self.record(
                    TraceKind::Dropped(DropReason::RetransmitsExhausted),
                    Protocol::Tcp,
                    local,
                    remote,
                    data.len(),
                );
                let at = now + link.latency;
                self.reset(stream, now);
                self.reset(peer, at);
            }
        }
    }

    pub(super) fn stream_data(&mut self, stream: StreamId, data: Bytes) {
        let Some(end) = self.streams.get(&stream) else {
            return;
        };
        let (host, local, remote, status) = (end.host, end.local, end.remote, end.status);
        if status == StreamStatus::Closed {
            self.record(
                TraceKind::Dropped(DropReason::StreamClosed),
                Protocol::Tcp,
                remote,
                local,
                data.len(),
            );
            return;
        }
        self.record(
            TraceKind::Delivered,
            Protocol::Tcp,
            remote,
            local,
            data.len(),
        );
        self.deliver(
            host,
            Input::Stream {
                stream,
                remote,
                data: &data,
            },
        );
    }

    pub(super) fn stream_fin(&mut self, stream: StreamId) {
        let Some(end) = self.streams.get_mut(&stream) else {
            return;
        };
        if end.notified {
            return;
        }
        end.status = StreamStatus::Closed;
        end.notified = true;
        let (host, local, remote) = (end.host, end.local, end.remote);
        self.record(TraceKind::StreamClose, Protocol::Tcp, local, remote, 0);
        self.release_nat_ports(stream);
        self.deliver(host, Input::StreamClosed { stream });
    }
}
