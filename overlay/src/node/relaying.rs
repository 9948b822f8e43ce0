//! The super node's media relay, wired to the node's sessions: every authenticated session is
//! registered with the [`Relay`] table (so frames are accepted only from, and sent only to,
//! session addresses), relay requests are answered, and relayed frames are forwarded.

use std::collections::HashMap;
use std::time::Instant;

use bytes::BytesMut;
use natter_core::endpoint::{ConnId, EndpointEvent, Path};
use natter_core::sansio::{Destination, Transmit};
use natter_core::wire::frame;
use natter_core::wire::message::Message;

use super::Node;
use crate::relay::{Party, Relay, RelayConfig, Released};

/// The relay and the sessions registered with it.
#[derive(Debug)]
pub(super) struct Relaying {
    pub(super) relay: Relay,
    /// Each registered session's transport, and the reverse.
    by_conn: HashMap<ConnId, Destination>,
    by_dest: HashMap<Destination, ConnId>,
}

impl Relaying {
    pub(super) fn new(cfg: RelayConfig) -> Self {
        Self {
            relay: Relay::new(cfg),
            by_conn: HashMap::new(),
            by_dest: HashMap::new(),
        }
    }
}

impl Node {
    /// Start relaying (on promotion): every open session is registered.
    pub(super) fn start_relaying(&mut self) {
        let mut cfg = self.cfg.relay.clone();
        cfg.seed = self.rng.bytes32();
        let mut r = Relaying::new(cfg);
        let conns: Vec<ConnId> = self.endpoint.connections().collect();
        for conn in conns {
            if let (Some(Path::Direct(dest)), Some(peer)) =
                (self.endpoint.remote(conn), self.endpoint.peer(conn))
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
        self.relaying = Some(r);
        self.endpoint.set_relaying(true);
    }

    /// Stop relaying (on demotion): the parties of every channel are told.
    pub(super) fn stop_relaying(&mut self, now: Instant) {
        self.endpoint.set_relaying(false);
        if let Some(mut r) = self.relaying.take() {
            let dests: Vec<Destination> = r.by_dest.keys().cloned().collect();
            let mut released = Vec::new();
            for d in dests {
                released.extend(r.relay.session_down(now, &d));
            }
            self.relaying = Some(r);
            self.notify_released(now, released);
            self.relaying = None;
        }
    }

    /// The relay counters, as a super node.
    pub fn relay(&self) -> Option<&Relay> {
        self.relaying.as_ref().map(|r| &r.relay)
    }

    /// Follow sessions for the relay; consumes relayed frames. Returns true when consumed.
    pub(super) fn relay_endpoint_event(&mut self, now: Instant, e: &EndpointEvent) -> bool {
        let Some(r) = self.relaying.as_mut() else {
            return false;
        };
        let released = match e {
            EndpointEvent::RelayFrame { from, frame } => {
                if let Some((to, bytes)) = r.relay.forward(now, from, frame) {
                    let payload = match to {
                        Destination::Udp(_) => bytes,
                        Destination::Stream(_) => {
                            let mut framed =
                                BytesMut::with_capacity(bytes.len() + frame::PREFIX_LEN);
                            if frame::encode(&bytes, &mut framed).is_err() {
                                return true;
                            }
                            framed.freeze()
                        }
                    };
                    self.transmits.push_back(Transmit {
                        destination: to,
                        source: None,
                        payload,
                        ttl: None,
                    });
                }
                return true;
            }
            EndpointEvent::Connected {
                conn,
                peer,
                remote: Path::Direct(dest),
                ..
            } => {
                r.by_conn.insert(*conn, dest.clone());
                r.by_dest.insert(dest.clone(), *conn);
                r.relay.session_up(
                    dest.clone(),
                    Party {
                        device: peer.certificate.device,
                        user: peer.certificate.user.clone(),
                    },
                )
            }
            EndpointEvent::PathChanged {
                conn,
                remote: Path::Direct(new),
            } => match r.by_conn.get(conn).cloned() {
                Some(old) if old != *new => {
                    r.by_dest.remove(&old);
                    r.by_conn.insert(*conn, new.clone());
                    r.by_dest.insert(new.clone(), *conn);
                    r.relay.session_moved(&old, new.clone())
                }
                _ => Vec::new(),
            },
            EndpointEvent::Closed { conn, .. } => match r.by_conn.remove(conn) {
                Some(dest) => {
                    r.by_dest.remove(&dest);
                    r.relay.session_down(now, &dest)
                }
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        self.notify_released(now, released);
        false
    }

    /// Relay requests and releases from sessions; returns true when consumed.
    pub(super) fn on_relay_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: &Message<'_>,
    ) -> bool {
        let Some(r) = self.relaying.as_mut() else {
            return false;
        };
        let Some(from) = r.by_conn.get(&conn).cloned() else {
            return matches!(
                msg,
                Message::RelayAllocate { .. } | Message::RelayRelease { .. }
            );
        };
        match msg {
            Message::RelayAllocate { request, device } => {
                match r.relay.allocate(now, &from, *device) {
                    Ok(a) => {
                        let peer_conn = r.by_dest.get(&a.peer).copied();
                        let _ = self.endpoint.send_control(
                            now,
                            conn,
                            &Message::RelayAllocated {
                                request: *request,
                                channel: a.channel,
                            },
                        );
                        if let Some(pc) = peer_conn {
                            let _ = self.endpoint.send_control(
                                now,
                                pc,
                                &Message::RelayOffer {
                                    channel: a.channel,
                                    device: a.requester.device,
                                },
                            );
                        }
                    }
                    Err(refusal) => {
                        let _ = self.endpoint.send_control(
                            now,
                            conn,
                            &Message::RelayRefused {
                                request: *request,
                                reason: refusal.code(),
                            },
                        );
                    }
                }
                true
            }
            Message::RelayRelease { channel } => {
                let released = r.relay.release(now, &from, *channel);
                self.notify_released(now, released.into_iter().collect());
                true
            }
            _ => false,
        }
    }

    fn notify_released(&mut self, now: Instant, released: Vec<Released>) {
        for rel in released {
            let conn = self
                .relaying
                .as_ref()
                .and_then(|r| r.by_dest.get(&rel.notify).copied());
            if let Some(conn) = conn {
                let _ = self.endpoint.send_control(
                    now,
                    conn,
                    &Message::RelayRelease {
                        channel: rel.channel,
                    },
                );
            }
        }
    }

    /// The relay's timers.
    pub(super) fn relay_timeout(&mut self, now: Instant) {
        let released = match self.relaying.as_mut() {
            Some(r) if r.relay.poll_timeout().is_some_and(|t| t <= now) => {
                r.relay.handle_timeout(now)
            }
            _ => return,
        };
        self.notify_released(now, released);
    }
}
