//! The super node's media relay, wired to the node's sessions: every authenticated session is
//! registered with the [`Relay`] table (so frames are accepted only from, and sent only to,
//! session addresses), relay requests are answered, and relayed frames are forwarded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use natter_core::endpoint::{ConnId, Endpoint, EndpointEvent, Path};
use natter_core::sansio::{Destination, Transmit};
use natter_core::wire::message::Message;
use natter_core::wire::{frame, relay};

use super::super::parts::Cx;
use crate::relay::{Party, Relay, RelayConfig, Released};

/// The relay and the sessions registered with it.
#[derive(Debug)]
pub(crate) struct Relaying {
    relay: Relay,
    /// Each registered session's transport, and the reverse.
    by_conn: BTreeMap<ConnId, Destination>,
    by_dest: BTreeMap<Destination, ConnId>,
}

impl Relaying {
    /// Start relaying: every session already open is registered.
    pub fn new(cfg: RelayConfig, endpoint: &Endpoint) -> Self {
        let mut r = Self {
            relay: Relay::new(cfg),
            by_conn: BTreeMap::new(),
            by_dest: BTreeMap::new(),
        };
        for conn in endpoint.connections() {
            if let (Some(Path::Direct { to: dest, .. }), Some(peer)) =
                (endpoint.remote(conn), endpoint.peer(conn))
            {
                let party = Party {
                    device: peer.certificate.device,
                    user: peer.certificate.user.clone(),
                };
                r.relay.session_up(dest.clone(), party);
                r.by_conn.insert(conn, dest.clone());
                r.by_dest.insert(dest.clone(), conn);
            }
        }
        r
    }

    /// The relay table and its counters.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Stop relaying: the parties of every channel are told.
    pub fn stop(&mut self, cx: &mut Cx<'_>) {
        cx.sessions.endpoint().set_relaying(false);
        let dests: Vec<Destination> = self.by_dest.keys().cloned().collect();
        let mut released = Vec::new();
        for d in dests {
            released.extend(self.relay.session_down(cx.now, &d));
        }
        self.notify_released(cx, released);
    }

    /// Follow every session for the relay; forwards relayed frames that came through the
    /// endpoint (on streams). Returns true when the event was such a frame.
    pub fn observe(&mut self, cx: &mut Cx<'_>, e: &EndpointEvent) -> bool {
        let released = match e {
            EndpointEvent::RelayFrame { from, frame } => {
                if let Some((to, bytes)) = self.relay.forward(cx.now, from, frame) {
                    send_relayed(cx, to, bytes);
                }
                return true;
            }
            EndpointEvent::Connected {
                conn,
                peer,
                remote: Path::Direct { to: dest, .. },
                ..
            } => {
                self.by_conn.insert(*conn, dest.clone());
                self.by_dest.insert(dest.clone(), *conn);
                self.relay.session_up(
                    dest.clone(),
                    Party {
                        device: peer.certificate.device,
                        user: peer.certificate.user.clone(),
                    },
                )
            }
            EndpointEvent::PathChanged {
                conn,
                remote: Path::Direct { to: new, .. },
            } => match self.by_conn.get(conn).cloned() {
                Some(old) if old != *new => {
                    self.by_dest.remove(&old);
                    self.by_conn.insert(*conn, new.clone());
                    self.by_dest.insert(new.clone(), *conn);
                    self.relay.session_moved(&old, new.clone())
                }
                _ => Vec::new(),
            },
            EndpointEvent::Closed { conn, .. } => match self.by_conn.remove(conn) {
                Some(dest) => {
                    self.by_dest.remove(&dest);
                    self.relay.session_down(cx.now, &dest)
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        self.notify_released(cx, released);
        false
    }

    /// A UDP datagram that is a frame for our relay: forwarded (or dropped and counted) at
    /// once, without a trip through the endpoint's event queue, the per-packet path of a busy
    /// relay. Returns false, and leaves the datagram to the endpoint, when it is not such a
    /// frame: a frame relayed *to* this node as a party of its own calls (direction bit set),
    /// or one the endpoint counts as malformed (shorter than a header and one byte, another
    /// version, channel 0). Frames on streams arrive as [`EndpointEvent::RelayFrame`].
    pub fn datagram(&mut self, cx: &mut Cx<'_>, source: SocketAddr, data: &[u8]) -> bool {
        match relay::decode(data) {
            Ok((h, _)) if !h.to_party => {}
            _ => return false,
        }
        if let Some((to, bytes)) = self.relay.forward(cx.now, &Destination::Udp(source), data) {
            send_relayed(cx, to, bytes);
        }
        true
    }

    /// Relay requests and releases from a session.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        let Some(from) = self.by_conn.get(&conn).cloned() else {
            // Not a session the relay knows (relayed itself, or not up): nothing to do.
            return;
        };
        match msg {
            Message::RelayAllocate { request, device } => {
                match self.relay.allocate(cx.now, &from, *device) {
                    Ok(a) => {
                        let peer_conn = self.by_dest.get(&a.peer).copied();
                        let _ = cx.sessions.send(
                            cx.now,
                            conn,
                            &Message::RelayAllocated {
                                request: *request,
                                channel: a.channel,
                            },
                        );
                        if let Some(pc) = peer_conn {
                            let _ = cx.sessions.send(
                                cx.now,
                                pc,
                                &Message::RelayOffer {
                                    channel: a.channel,
                                    device: a.requester.device,
                                },
                            );
                        }
                    }
                    Err(refusal) => {
                        let _ = cx.sessions.send(
                            cx.now,
                            conn,
                            &Message::RelayRefused {
                                request: *request,
                                reason: refusal.code(),
                            },
                        );
                    }
                }
            }
            Message::RelayRelease { channel } => {
                let released = self.relay.release(cx.now, &from, *channel);
                self.notify_released(cx, released.into_iter().collect());
            }
            _ => {}
        }
    }

    fn notify_released(&mut self, cx: &mut Cx<'_>, released: Vec<Released>) {
        for rel in released {
            if let Some(&conn) = self.by_dest.get(&rel.notify) {
                let _ = cx.sessions.send(
                    cx.now,
                    conn,
                    &Message::RelayRelease {
                        channel: rel.channel,
                    },
                );
            }
        }
    }

    /// The relay's timers.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        if self.relay.poll_timeout().is_some_and(|t| t <= cx.now) {
            let released = self.relay.handle_timeout(cx.now);
            self.notify_released(cx, released);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relay.poll_timeout()
    }
}

/// Queue a forwarded frame: as is in a datagram, with the stream's length prefix on a stream.
fn send_relayed(cx: &mut Cx<'_>, to: Destination, bytes: Bytes) {
    let payload = match to {
        Destination::Udp(_) => bytes,
        Destination::Stream(_) => {
            let mut framed = BytesMut::with_capacity(bytes.len() + frame::PREFIX_LEN);
            if frame::encode(&bytes, &mut framed).is_err() {
                return;
            }
            framed.freeze()
        }
    };
    cx.out.transmits.push_back(Transmit {
        destination: to,
        source: None,
        payload,
        ttl: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Node, NodeConfig, RolePolicy};
    use natter_core::endpoint::Endpoint;
    use natter_core::sansio::{Input, Machine};
    use natter_core::testkit::{TestNetwork, TEST_WALL};
    use natter_core::wire::message::Message;

    const SN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7000);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A forced super node and two devices on UDP, with every datagram between them delivered
    /// at once; the node's datagrams to the devices are kept too, for the test to look at.
    struct Net {
        sn: Node,
        devices: Vec<(SocketAddr, Endpoint)>,
        delivered: Vec<(SocketAddr, Bytes)>,
    }

    impl Net {
        fn new(now: Instant) -> Self {
            let net = TestNetwork::new(5);
            let mut cfg = NodeConfig::new(net.identity("relay-sn"), [3; 32], TEST_WALL, now, SN);
            cfg.role = RolePolicy::Force;
            let devices = ["alice", "bob"]
                .iter()
                .enumerate()
                .map(|(i, u)| (addr(8000 + i as u16), net.endpoint(u, now)))
                .collect();
            Self {
                sn: Node::new(cfg, now),
                devices,
                delivered: Vec::new(),
            }
        }

        /// One datagram from device `i` to the super node.
        fn send(&mut self, now: Instant, i: usize, data: &[u8]) {
            let source = self.devices[i].0;
            self.sn.handle_input(
                now,
                Input::Datagram {
                    source,
                    local: SN,
                    data,
                },
            );
        }

        fn pump(&mut self, now: Instant) {
            loop {
                let mut moved = false;
                for i in 0..self.devices.len() {
                    while let Some(t) = self.devices[i].1.poll_transmit() {
                        moved = true;
                        if t.destination == Destination::Udp(SN) {
                            self.send(now, i, &t.payload);
                        }
                    }
                }
                while let Some(t) = self.sn.poll_transmit() {
                    let Destination::Udp(to) = t.destination else {
                        continue;
                    };
                    let Some(d) = self.devices.iter_mut().find(|(a, _)| *a == to) else {
                        continue;
                    };
                    moved = true;
                    self.delivered.push((to, t.payload.clone()));
                    d.1.handle_input(
                        now,
                        Input::Datagram {
                            source: SN,
                            local: to,
                            data: &t.payload,
                        },
                    );
                }
                if !moved {
                    return;
                }
            }
        }
    }

    #[test]
    fn datagram_frames_are_forwarded_straight_and_others_left_to_the_endpoint() {
        let now = Instant::now();
        let mut n = Net::new(now);
        let conns: Vec<ConnId> = (0..2)
            .map(|i| {
                n.devices[i]
                    .1
                    .connect(now, Destination::Udp(SN), None)
                    .unwrap()
            })
            .collect();
        n.pump(now);
        let bob = TestNetwork::new(5).identity("bob").device.device_id();
        n.devices[0]
            .1
            .send_control(
                now,
                conns[0],
                &Message::RelayAllocate {
                    request: 9,
                    device: bob,
                },
            )
            .unwrap();
        n.pump(now);
        let mut channel = None;
        let mut offered = false;
        for i in 0..2 {
            while let Some(e) = n.devices[i].1.poll_event() {
                if let EndpointEvent::Control { message, .. } = e {
                    match Message::decode(&message).unwrap() {
                        Message::RelayAllocated {
                            request: 9,
                            channel: c,
                        } => channel = Some(c),
                        Message::RelayOffer { .. } => offered = true,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
        }
        let channel = channel.expect("allocated");
        assert!(offered);
        n.delivered.clear();
        let (alice, bob_addr) = (n.devices[0].0, n.devices[1].0);

        // Towards the relay: forwarded with the direction bit set, nothing else sent.
        let mut frame = BytesMut::new();
        relay::encode(channel, false, b"opaque inner packet", &mut frame);
        let before = n.sn.endpoint().stats().packets_in;
        n.send(now, 0, &frame);
        let out = n.sn.poll_transmit().expect("forwarded");
        assert_eq!(out.destination, Destination::Udp(bob_addr));
        let mut expected = frame.clone();
        expected[1] |= 0x80;
        assert_eq!(&out.payload[..], &expected[..]);
        assert!(n.sn.poll_transmit().is_none());
        assert_eq!(n.sn.relay().unwrap().stats().relayed_packets, 1);
        assert_eq!(
            n.sn.endpoint().stats().packets_in,
            before,
            "not through the endpoint"
        );

        // Bob answers on the same channel.
        let mut back = BytesMut::new();
        relay::encode(channel, false, b"the answer", &mut back);
        n.send(now, 1, &back);
        let out = n.sn.poll_transmit().expect("forwarded back");
        assert_eq!(out.destination, Destination::Udp(alice));
        assert_eq!(n.sn.relay().unwrap().stats().relayed_packets, 2);

        // Unknown channel: dropped by the relay, and counted there.
        let mut stray = BytesMut::new();
        relay::encode(channel ^ 1, false, b"x", &mut stray);
        n.send(now, 0, &stray);
        assert!(n.sn.poll_transmit().is_none());
        assert_eq!(n.sn.relay().unwrap().stats().dropped_unknown_channel, 1);

        // The relay's own frames towards a party, and frames the endpoint calls malformed,
        // are the endpoint's: never forwarded, counted there.
        let mut to_party = BytesMut::new();
        relay::encode(channel, true, &[0xee], &mut to_party);
        let header_only = [0x71, 0, 0, 0, 1];
        let zero_channel = [0x71, 0, 0, 0, 0, 9];
        let before = n.sn.endpoint().stats();
        for bad in [&to_party[..], &header_only[..], &zero_channel[..]] {
            n.send(now, 0, bad);
        }
        assert!(n.sn.poll_transmit().is_none());
        let after = n.sn.endpoint().stats();
        assert_eq!(after.packets_in, before.packets_in + 3);
        assert_eq!(after.relayed_in, before.relayed_in + 1);
        assert_eq!(after.dropped_not_natter, before.dropped_not_natter + 1);
        assert_eq!(after.dropped_malformed, before.dropped_malformed + 2);
        let stats = n.sn.relay().unwrap().stats();
        assert_eq!(stats.relayed_packets, 2);
        assert_eq!(stats.dropped_malformed, 0);
    }
}
