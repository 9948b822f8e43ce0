//! The super-node role: serving ordinary nodes and knowing the other super nodes.
//!
//! A sub-machine of the node facade: it decides what to answer to overlay messages arriving on
//! the node's sessions, and the facade sends the answers. It keeps:
//!
//! * the **clients** attached to this super node (up to [`SuperNodeConfig::max_clients`];
//!   beyond that an attach is refused with other super nodes to try);
//! * the **membership** ([`Membership`]): every other super node, seeded from the host cache
//!   and the super nodes that link to it, then kept complete and current by the membership
//!   protocol (probing ring successors, gossiping joins and failures, anti-entropy). Its
//!   messages go to super nodes by address; the node facade carries them over sessions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::crypto::{DeviceId, LocalIdentity, UserName};
use natter_core::endpoint::ConnId;
use natter_core::wire::message::{HostEntry, Message, MAX_HOST_ENTRIES};

use crate::membership::{Membership, MembershipConfig};

/// Settings of the role.
#[derive(Debug, Clone)]
pub struct SuperNodeConfig {
    /// This super node's own entry (its address and static key).
    pub me: HostEntry,
    /// Its identity: signs its membership events, and its trusted authorities check others'.
    pub identity: LocalIdentity,
    /// Most attached clients (default 2,000).
    pub max_clients: usize,
    /// Keep-alive interval clients are told to use (default 20 s).
    pub keepalive: Duration,
    /// The membership protocol's settings.
    pub membership: MembershipConfig,
    /// This super node's incarnation: the wall-clock second it took the role (later than
    /// anything said about an earlier run of it).
    pub incarnation: u32,
}

impl SuperNodeConfig {
    /// Defaults around this node's own entry, taking the role at wall-clock second
    /// `incarnation`.
    pub fn new(me: HostEntry, identity: LocalIdentity, seed: [u8; 32], incarnation: u32) -> Self {
        Self {
            me,
            identity,
            max_clients: 2000,
            keepalive: Duration::from_secs(20),
            membership: MembershipConfig::new(seed),
            incarnation,
        }
    }
}

/// An attached client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Who.
    pub user: UserName,
    /// Which device.
    pub device: DeviceId,
    /// Where it is, as seen here.
    pub reflexive: SocketAddr,
    /// Its NAT type code.
    pub nat: u8,
    /// Its own addresses.
    pub local_addresses: Vec<SocketAddr>,
    /// Since when.
    pub since: Instant,
}

/// What the role reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuperNodeEvent {
    /// A client attached.
    ClientAttached {
        /// Who.
        user: UserName,
        /// Its session.
        conn: ConnId,
    },
    /// A client left.
    ClientDetached {
        /// Who.
        user: UserName,
        /// Its session.
        conn: ConnId,
    },
    /// An attach was refused because this super node is full.
    Refused {
        /// Its session.
        conn: ConnId,
    },
}

/// A message to send on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The session.
    pub conn: ConnId,
    /// The message (owned).
    pub message: Message<'static>,
}

/// The super-node role. See the [module documentation](self).
#[derive(Debug)]
pub struct SuperNodeRole {
    cfg: SuperNodeConfig,
    clients: BTreeMap<ConnId, Client>,
    /// The session of each client device (its latest, when it attached twice).
    by_device: BTreeMap<DeviceId, ConnId>,
    membership: Membership,
    /// Links with other super nodes (host-cache exchange, STUN partnering).
    peers: BTreeMap<ConnId, SocketAddr>,
}

impl SuperNodeRole {
    /// Take the role at `now`, knowing the super nodes in `known`.
    pub fn new(cfg: SuperNodeConfig, known: &[HostEntry], now: Instant) -> Self {
        let membership = Membership::new(
            cfg.membership.clone(),
            cfg.identity.clone(),
            cfg.me,
            cfg.incarnation,
            known,
            now,
        );
        Self {
            cfg,
            clients: BTreeMap::new(),
            by_device: BTreeMap::new(),
            membership,
            peers: BTreeMap::new(),
        }
    }

    /// The membership (every other super node).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The membership, to feed it messages and drain its output.
    pub fn membership_mut(&mut self) -> &mut Membership {
        &mut self.membership
    }

    /// This super node's entry.
    pub fn me(&self) -> HostEntry {
        self.cfg.me
    }

    /// Attached clients.
    pub fn clients(&self) -> impl Iterator<Item = (&ConnId, &Client)> {
        self.clients.iter()
    }

    /// Number of attached clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Live super nodes (not counting itself), in address order.
    pub fn members(&self) -> Vec<HostEntry> {
        let mut v: Vec<HostEntry> = self.membership.alive().collect();
        v.sort_by_key(|e| e.addr);
        v
    }

    /// Sessions with other super nodes and their addresses, in address order.
    pub fn peer_links(&self) -> Vec<(ConnId, SocketAddr)> {
        let mut v: Vec<(ConnId, SocketAddr)> = self.peers.iter().map(|(c, a)| (*c, *a)).collect();
        v.sort_by_key(|(_, a)| *a);
        v
    }

    /// True when this super node is full.
    pub fn is_full(&self) -> bool {
        self.clients.len() >= self.cfg.max_clients
    }

    /// A random sample of live super nodes (itself first when `include_me`).
    pub fn sample(&mut self, n: usize, include_me: bool) -> Vec<HostEntry> {
        let mut all = self.membership.sample(n);
        if include_me {
            all.insert(0, self.cfg.me);
            all.truncate(n);
        }
        all
    }

    /// A session with another super node is up (this node linked to it or it linked here).
    pub fn peer_connected(&mut self, now: Instant, conn: ConnId, entry: HostEntry) -> Reply {
        self.membership.hint(now, entry);
        self.peers.insert(conn, entry.addr);
        let entries = self.sample(MAX_HOST_ENTRIES, true);
        Reply {
            conn,
            message: Message::OverlayMembership { entries },
        }
    }

    /// An overlay message arrived on session `conn` from a peer whose certificate names
    /// `user`/`device`, seen at `remote`. Returns the replies to send.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: &UserName,
        device: DeviceId,
        remote: SocketAddr,
        message: &Message<'_>,
    ) -> (Vec<Reply>, Vec<SuperNodeEvent>) {
        let mut replies = Vec::new();
        let mut events = Vec::new();
        match message {
            Message::OverlayAttach {
                nat,
                local_addresses,
            } => {
                if self.is_full() && !self.clients.contains_key(&conn) {
                    events.push(SuperNodeEvent::Refused { conn });
                    replies.push(Reply {
                        conn,
                        message: Message::OverlayAttachAck {
                            accepted: false,
                            reflexive: remote,
                            keepalive_secs: self.cfg.keepalive.as_secs() as u16,
                            super_nodes: self.sample(MAX_HOST_ENTRIES, false),
                        },
                    });
                } else {
                    let client = Client {
                        user: user.clone(),
                        device,
                        reflexive: remote,
                        nat: *nat,
                        local_addresses: local_addresses.clone(),
                        since: now,
                    };
                    self.by_device.insert(device, conn);
                    if self.clients.insert(conn, client).is_none() {
                        events.push(SuperNodeEvent::ClientAttached {
                            user: user.clone(),
                            conn,
                        });
                    }
                    replies.push(Reply {
                        conn,
                        message: Message::OverlayAttachAck {
                            accepted: true,
                            reflexive: remote,
                            keepalive_secs: self.cfg.keepalive.as_secs() as u16,
                            super_nodes: self.sample(MAX_HOST_ENTRIES, false),
                        },
                    });
                }
            }
            Message::OverlayHostCache { entries } if entries.is_empty() => {
                replies.push(Reply {
                    conn,
                    message: Message::OverlayHostCache {
                        entries: self.sample(MAX_HOST_ENTRIES, true),
                    },
                });
            }
            Message::OverlayMembership { entries } => {
                let first_contact = !self.peers.contains_key(&conn);
                // A host-cache style hello: the sender names itself first. Who is a member is
                // for the membership protocol to say (what anyone lists here is not taken).
                if let Some(me) = entries.first() {
                    self.peers.insert(conn, me.addr);
                }
                if first_contact {
                    replies.push(Reply {
                        conn,
                        message: Message::OverlayMembership {
                            entries: self.sample(MAX_HOST_ENTRIES, true),
                        },
                    });
                }
            }
            _ => {}
        }
        (replies, events)
    }

    /// A session closed.
    pub fn session_closed(&mut self, conn: ConnId) -> Option<SuperNodeEvent> {
        self.peers.remove(&conn);
        let client = self.clients.remove(&conn)?;
        if self.by_device.get(&client.device) == Some(&conn) {
            self.by_device.remove(&client.device);
        }
        Some(SuperNodeEvent::ClientDetached {
            user: client.user,
            conn,
        })
    }

    /// True when session `conn` is an attached client's.
    pub fn is_client(&self, conn: ConnId) -> bool {
        self.clients.contains_key(&conn)
    }

    /// The session of the attached client `device`, if it is one.
    pub fn client_of(&self, device: DeviceId) -> Option<ConnId> {
        self.by_device.get(&device).copied()
    }

    /// Timers (the membership's probes, gossip and anti-entropy; its messages are then
    /// waiting in [`Membership::poll_output`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.membership.handle_timeout(now);
    }

    /// When the role next wants [`SuperNodeRole::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.membership.poll_timeout()
    }

    /// Give the role up: tell every client where to go instead, and the other super nodes
    /// that this one leaves (through [`Membership::poll_output`]).
    pub fn handover(&mut self) -> Vec<Reply> {
        self.membership.leave();
        let entries = self.sample(MAX_HOST_ENTRIES, false);
        let conns: Vec<ConnId> = self.clients.keys().copied().collect();
        self.clients.clear();
        self.by_device.clear();
        conns
            .into_iter()
            .map(|conn| Reply {
                conn,
                message: Message::OverlayHandover {
                    entries: entries.clone(),
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> HostEntry {
        HostEntry {
            addr: SocketAddr::from(([198, 18, 0, i], 4000)),
            static_key: [i; 32],
        }
    }

    #[test]
    fn attach_refuse_when_full_host_cache_and_gossip() {
        let now = Instant::now();
        let mut identity = natter_core::testkit::TestNetwork::new(1).identity("sn1");
        identity.certificate.dh_public = entry(1).static_key;
        let mut cfg = SuperNodeConfig::new(entry(1), identity, [0; 32], 1_000);
        cfg.max_clients = 1;
        let mut sn = SuperNodeRole::new(cfg, &[entry(2), entry(3)], now);
        let alice = UserName::parse("alice").unwrap();
        let remote: SocketAddr = "198.18.5.5:777".parse().unwrap();
        let attach = Message::OverlayAttach {
            nat: 1,
            local_addresses: vec![],
        };
        let (r, e) = sn.handle_message(now, ConnId(1), &alice, DeviceId([1; 16]), remote, &attach);
        assert!(
            matches!(&r[0].message, Message::OverlayAttachAck { accepted: true, reflexive, super_nodes, .. } if *reflexive == remote && super_nodes.len() == 2)
        );
        assert_eq!(e.len(), 1);
        let bob = UserName::parse("bob").unwrap();
        let (r, e) = sn.handle_message(now, ConnId(2), &bob, DeviceId([2; 16]), remote, &attach);
        assert!(matches!(
            &r[0].message,
            Message::OverlayAttachAck {
                accepted: false,
                ..
            }
        ));
        assert_eq!(e, vec![SuperNodeEvent::Refused { conn: ConnId(2) }]);
        let (r, _) = sn.handle_message(
            now,
            ConnId(1),
            &alice,
            DeviceId([1; 16]),
            remote,
            &Message::OverlayHostCache { entries: vec![] },
        );
        assert!(
            matches!(&r[0].message, Message::OverlayHostCache { entries } if entries[0] == entry(1) && entries.len() == 3)
        );
        // A linking super node's list is a hello, not membership: nobody new is taken from it.
        let (r, _) = sn.handle_message(
            now,
            ConnId(9),
            &bob,
            DeviceId([9; 16]),
            remote,
            &Message::OverlayMembership {
                entries: vec![entry(4), entry(5)],
            },
        );
        assert_eq!(r.len(), 1, "first contact is answered");
        assert_eq!(sn.members().len(), 2);
        // A member can report another gone (a hint it checks); a stranger's report is dropped.
        let gone = |i: u8| natter_core::wire::message::MemberEvent {
            alive: false,
            incarnation: 0,
            entry: entry(i),
            signature: None,
        };
        let update = |i: u8| Message::MemberUpdate {
            sync: false,
            events: vec![gone(i)],
        };
        assert!(sn
            .membership_mut()
            .handle_message(now, entry(7), &update(3)));
        assert_eq!(sn.members().len(), 2, "a stranger's report is dropped");
        assert_eq!(sn.membership().stats().dropped, 1);
        assert!(sn
            .membership_mut()
            .handle_message(now, entry(2), &update(3)));
        assert_eq!(
            sn.members().len(),
            2,
            "a member's report is a hint, not a fact"
        );
        assert_eq!(sn.membership().stats().hints, 1);
        // Its timers probe the member reported gone.
        sn.handle_timeout(now + Duration::from_secs(2));
        let mut probed = false;
        while let Some((to, m)) = sn.membership_mut().poll_output() {
            probed |= to == entry(3) && matches!(m, Message::MemberProbe { .. });
        }
        assert!(probed, "the reported member is probed");
        assert_eq!(
            sn.session_closed(ConnId(1)),
            Some(SuperNodeEvent::ClientDetached {
                user: alice,
                conn: ConnId(1)
            })
        );
        assert_eq!(sn.client_count(), 0);
    }
}
