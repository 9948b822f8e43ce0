//! NAT boxes with the behaviours of RFC 4787 (UDP) and an outbound-only TCP model.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::link::LinkConfig;
use crate::rng::SimRng;

/// How a NAT reuses an external port for an internal endpoint (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MappingBehavior {
    /// One external port per internal `ip:port`, whatever the destination ("cone").
    EndpointIndependent,
    /// One external port per internal `ip:port` and destination IP.
    AddressDependent,
    /// One external port per internal `ip:port` and destination `ip:port` ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a NAT lets through an existing mapping (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilteringBehavior {
    /// Anyone may send to the mapping once it exists ("full cone").
    EndpointIndependent,
    /// Only IPs the internal endpoint has sent to ("restricted cone").
    AddressDependent,
    /// Only exact `ip:port`s the internal endpoint has sent to ("port-restricted cone").
    AddressAndPortDependent,
}

/// How a NAT picks the external port of a new mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// A uniformly random free port of [`NatConfig::port_range`], drawn from the simulator's
    /// seeded RNG.
    Random,
    /// The internal port when it is free (and in range), otherwise a random one.
    Preserve,
    /// The next free port of [`NatConfig::port_range`] in increasing order (wrapping).
    Sequential,
}

/// Behaviour of one NAT box.
///
/// The presets ([`full_cone`](Self::full_cone), [`restricted_cone`](Self::restricted_cone),
/// [`port_restricted_cone`](Self::port_restricted_cone),
/// [`linux_masquerade`](Self::linux_masquerade), [`symmetric`](Self::symmetric),
/// [`udp_blocking_firewall`](Self::udp_blocking_firewall)) can be tweaked with struct update
/// syntax.
///
/// TCP is modelled simply: connections opened from inside get a fresh external port (chosen
/// with [`port_allocation`](Self::port_allocation)) for as long as the stream lives;
/// connections opened from outside are always blocked.
#[derive(Debug, Clone, PartialEq)]
pub struct NatConfig {
    /// UDP mapping behaviour.
    pub mapping: MappingBehavior,
    /// UDP filtering behaviour.
    pub filtering: FilteringBehavior,
    /// Whether a host inside may reach another inside host through the NAT's external
    /// address. Hairpinned packets get their source translated to its external mapping.
    pub hairpinning: bool,
    /// How long a UDP mapping survives without outbound traffic (RFC 4787 REQ-5 asks for at
    /// least 2 minutes, many real NATs use 30 s).
    pub mapping_timeout: Duration,
    /// Whether inbound packets also refresh a mapping (RFC 4787 REQ-6 leaves this open).
    pub refresh_on_inbound: bool,
    /// How external ports are chosen.
    pub port_allocation: PortAllocation,
    /// External ports the NAT may use.
    pub port_range: RangeInclusive<u16>,
    /// Firewall: drop all UDP crossing the box, in either direction. TCP still goes out.
    pub block_udp: bool,
    /// Firewall: when set, outbound TCP connections are let through only to these
    /// destination ports (a corporate firewall that passes web ports only); the others are
    /// dropped silently, so the attempt times out. `None` lets every port through.
    pub tcp_ports: Option<Vec<u16>>,
    /// Model the connection-tracking clash of Linux NATs: an inbound UDP packet from a remote
    /// `R` that matches no mapping (or that the filter refuses) still leaves a tracking entry
    /// for (`R`, external port) behind, for [`mapping_timeout`](Self::mapping_timeout) after
    /// the last such packet. When an inside endpoint later sends to `R` and its mapping's
    /// external port is that port, the pair is taken: the NAT moves this one destination onto
    /// a new external port (a mapping of its own). This is why two Linux NATs punching at
    /// each other without care fail: the first packet to reach a NAT before the inside host
    /// sent pushes the host's later packets to the peer onto a port the peer never heard of.
    /// Opening the own NAT first with a low-TTL packet that dies before the far NAT avoids it.
    pub conntrack_clash: bool,
    /// The link between the box and the hosts behind it (also used between two hosts on the
    /// same LAN).
    pub lan_link: LinkConfig,
}

impl NatConfig {
    /// Endpoint-independent mapping and filtering.
    pub fn full_cone() -> Self {
        NatConfig {
            mapping: MappingBehavior::EndpointIndependent,
            filtering: FilteringBehavior::EndpointIndependent,
            hairpinning: true,
            mapping_timeout: Duration::from_secs(30),
            refresh_on_inbound: false,
            port_allocation: PortAllocation::Random,
            port_range: 1024..=65535,
            block_udp: false,
            tcp_ports: None,
            conntrack_clash: false,
            lan_link: LinkConfig::with_latency(Duration::from_millis(1)),
        }
    }

    /// Endpoint-independent mapping, address-dependent filtering.
    pub fn restricted_cone() -> Self {
        NatConfig {
            filtering: FilteringBehavior::AddressDependent,
            ..Self::full_cone()
        }
    }

    /// Endpoint-independent mapping, address-and-port-dependent filtering: the most common
    /// home router, and the [`Default`].
    pub fn port_restricted_cone() -> Self {
        NatConfig {
            filtering: FilteringBehavior::AddressAndPortDependent,
            ..Self::full_cone()
        }
    }

    /// A Linux router masquerading its LAN, as measured in network namespaces: endpoint-
    /// independent mapping, address-and-port-dependent filtering, the source port kept when
    /// free, no hairpinning, and the [`conntrack_clash`](Self::conntrack_clash).
    pub fn linux_masquerade() -> Self {
        NatConfig {
            filtering: FilteringBehavior::AddressAndPortDependent,
            port_allocation: PortAllocation::Preserve,
            hairpinning: false,
            conntrack_clash: true,
            ..Self::full_cone()
        }
    }

    /// Address-and-port-dependent mapping and filtering.
    pub fn symmetric() -> Self {
        NatConfig {
            mapping: MappingBehavior::AddressAndPortDependent,
            filtering: FilteringBehavior::AddressAndPortDependent,
            ..Self::full_cone()
        }
    }

    /// A port-restricted NAT that also drops every UDP packet: only outbound TCP works.
    pub fn udp_blocking_firewall() -> Self {
        NatConfig {
            block_udp: true,
            ..Self::port_restricted_cone()
        }
    }

    /// A [`udp_blocking_firewall`](Self::udp_blocking_firewall) that also lets TCP out only
    /// to the destination ports `tcp_ports` (web ports, say).
    pub fn web_only_firewall(tcp_ports: &[u16]) -> Self {
        NatConfig {
            tcp_ports: Some(tcp_ports.to_vec()),
            ..Self::udp_blocking_firewall()
        }
    }
}

impl Default for NatConfig {
    fn default() -> Self {
        Self::port_restricted_cone()
    }
}

/// A snapshot of one live UDP mapping, for tests and debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingInfo {
    /// The internal endpoint.
    pub internal: SocketAddr,
    /// The external endpoint it is mapped to.
    pub external: SocketAddr,
    /// The destination the mapping is tied to: `None` for endpoint-independent mappings, an
    /// address with port 0 for address-dependent ones, the full remote address for
    /// address-and-port-dependent ones and for those a
    /// [conntrack clash](NatConfig::conntrack_clash) split off.
    pub destination: Option<SocketAddr>,
    /// Remote endpoints the internal endpoint has sent to through this mapping.
    pub contacted: Vec<SocketAddr>,
    /// Offset from the simulation start of the last refresh.
    pub last_active: Duration,
}

/// Why a NAT refused a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatRefusal {
    /// Inbound to an external port with no live mapping.
    NoMapping,
    /// The mapping exists but the filter rejects the sender.
    Filtered,
    /// No free external port.
    PortsExhausted,
}

struct Mapping {
    internal: SocketAddr,
    destination: Option<SocketAddr>,
    contacted: BTreeSet<SocketAddr>,
    last_active: Duration,
}

/// The mutable state of one NAT box.
pub(crate) struct NatState {
    pub(crate) config: NatConfig,
    external_ip: IpAddr,
    udp: BTreeMap<u16, Mapping>,
    /// Tracking entries left by unsolicited inbound packets ([`NatConfig::conntrack_clash`]):
    /// (remote, external port) to the time of the last such packet.
    clashes: BTreeMap<(SocketAddr, u16), Duration>,
    tcp: BTreeSet<u16>,
    next_sequential: u16,
}

impl NatState {
    pub(crate) fn new(config: NatConfig, external_ip: IpAddr) -> Self {
        let next_sequential = *config.port_range.start();
        NatState {
            config,
            external_ip,
            udp: BTreeMap::new(),
            clashes: BTreeMap::new(),
            tcp: BTreeSet::new(),
            next_sequential,
        }
    }

    pub(crate) fn external_ip(&self) -> IpAddr {
        self.external_ip
    }

    /// A new external address: every UDP mapping (of the old one) is forgotten.
    pub(crate) fn set_external_ip(&mut self, ip: IpAddr) {
        self.external_ip = ip;
        self.reset_udp();
    }

    /// Forgets every UDP mapping and tracking entry.
    pub(crate) fn reset_udp(&mut self) {
        self.udp.clear();
        self.clashes.clear();
    }

    /// Drops UDP mappings (and clash entries) idle for at least the mapping timeout.
    fn expire(&mut self, now: Duration) {
        let timeout = self.config.mapping_timeout;
        self.udp
            .retain(|_, m| now.saturating_sub(m.last_active) < timeout);
        self.clashes
            .retain(|_, last| now.saturating_sub(*last) < timeout);
    }

    fn destination_key(&self, remote: SocketAddr) -> Option<SocketAddr> {
        match self.config.mapping {
            MappingBehavior::EndpointIndependent => None,
            MappingBehavior::AddressDependent => Some(SocketAddr::new(remote.ip(), 0)),
            MappingBehavior::AddressAndPortDependent => Some(remote),
        }
    }

    /// Translates an outbound UDP packet from `internal` to `remote`, creating or refreshing
    /// the mapping. Returns the external port.
    pub(crate) fn outbound_udp(
        &mut self,
        now: Duration,
        internal: SocketAddr,
        remote: SocketAddr,
        rng: &mut SimRng,
    ) -> Result<u16, NatRefusal> {
        self.expire(now);
        let key = self.destination_key(remote);
        let find = |s: &Self, dest: Option<SocketAddr>| {
            s.udp
                .iter()
                .find(|(_, m)| m.internal == internal && m.destination == dest)
                .map(|(port, _)| *port)
        };
        // A mapping split off for exactly this remote by a clash comes first.
        let split = if key == Some(remote) {
            None
        } else {
            find(self, Some(remote))
        };
        let existing = split.or_else(|| find(self, key));
        let taken = |s: &Self, port: u16| s.clashes.contains_key(&(remote, port));
        let port = match existing {
            Some(port) if split.is_some() || !taken(self, port) => port,
            _ => {
                // A new mapping; or, when the pair (remote, port) is taken by a tracking entry,
                // a mapping of this remote's own on another port (the port the endpoint's
                // mapping has, or would keep, stays for other destinations).
                let preserved = self.config.port_allocation == PortAllocation::Preserve
                    && !self.udp.contains_key(&internal.port())
                    && taken(self, internal.port());
                let clashed = existing.is_some() || preserved;
                let port = self.allocate(internal.port(), rng, |p, s| {
                    s.udp.contains_key(&p) || s.clashes.contains_key(&(remote, p))
                })?;
                self.udp.insert(
                    port,
                    Mapping {
                        internal,
                        destination: if clashed { Some(remote) } else { key },
                        contacted: BTreeSet::new(),
                        last_active: now,
                    },
                );
                port
            }
        };
        let mapping = self
            .udp
            .get_mut(&port)
            .expect("mapping just found or created");
        mapping.contacted.insert(remote);
        mapping.last_active = now;
        Ok(port)
    }

    /// Translates an inbound UDP packet from `remote` to external port `port`. Returns the
    /// internal endpoint.
    pub(crate) fn inbound_udp(
        &mut self,
        now: Duration,
        remote: SocketAddr,
        port: u16,
    ) -> Result<SocketAddr, NatRefusal> {
        self.expire(now);
        let filtering = self.config.filtering;
        let refresh = self.config.refresh_on_inbound;
        let verdict = match self.udp.get_mut(&port) {
            None => Err(NatRefusal::NoMapping),
            Some(mapping) => {
                let allowed = match filtering {
                    FilteringBehavior::EndpointIndependent => true,
                    FilteringBehavior::AddressDependent => {
                        mapping.contacted.iter().any(|c| c.ip() == remote.ip())
                    }
                    FilteringBehavior::AddressAndPortDependent => {
                        mapping.contacted.contains(&remote)
                    }
                };
                if allowed {
                    if refresh {
                        mapping.last_active = now;
                    }
                    Ok(mapping.internal)
                } else {
                    Err(NatRefusal::Filtered)
                }
            }
        };
        if verdict.is_err() && self.config.conntrack_clash {
            self.clashes.insert((remote, port), now);
        }
        verdict
    }

    /// Reserves an external port for an outbound TCP connection from internal port
    /// `internal_port`.
    pub(crate) fn allocate_tcp(
        &mut self,
        internal_port: u16,
        rng: &mut SimRng,
    ) -> Result<u16, NatRefusal> {
        let port = self.allocate(internal_port, rng, |p, s| s.tcp.contains(&p))?;
        self.tcp.insert(port);
        Ok(port)
    }

    /// Frees a TCP port reserved by [`allocate_tcp`](Self::allocate_tcp).
    pub(crate) fn release_tcp(&mut self, port: u16) {
        self.tcp.remove(&port);
    }

    fn allocate(
        &mut self,
        preferred: u16,
        rng: &mut SimRng,
        used: impl Fn(u16, &Self) -> bool,
    ) -> Result<u16, NatRefusal> {
        let lo = *self.config.port_range.start();
        let hi = *self.config.port_range.end();
        if lo > hi {
            return Err(NatRefusal::PortsExhausted);
        }
        let span = u64::from(hi - lo) + 1;
        let free_from = |start: u64, s: &Self| {
            (0..span)
                .map(|i| lo + ((start + i) % span) as u16)
                .find(|&p| !used(p, s))
        };
        let port = match self.config.port_allocation {
            PortAllocation::Preserve
                if self.config.port_range.contains(&preferred) && !used(preferred, self) =>
            {
                Some(preferred)
            }
            PortAllocation::Random | PortAllocation::Preserve => {
                let start = rng.below(span);
                free_from(start, self)
            }
            PortAllocation::Sequential => {
                let start = u64::from(self.next_sequential.clamp(lo, hi) - lo);
                let port = free_from(start, self);
                if let Some(p) = port {
                    self.next_sequential = if p == hi { lo } else { p + 1 };
                }
                port
            }
        };
        port.ok_or(NatRefusal::PortsExhausted)
    }

    /// The live UDP mappings at `now`, in external port order.
    pub(crate) fn mappings(&self, now: Duration) -> Vec<MappingInfo> {
        let timeout = self.config.mapping_timeout;
        self.udp
            .iter()
            .filter(|(_, m)| now.saturating_sub(m.last_active) < timeout)
            .map(|(port, m)| MappingInfo {
                internal: m.internal,
                external: SocketAddr::new(self.external_ip, *port),
                destination: m.destination,
                contacted: m.contacted.iter().copied().collect(),
                last_active: m.last_active,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nat(config: NatConfig) -> NatState {
        NatState::new(config, "198.18.0.1".parse().unwrap())
    }

    #[test]
    fn endpoint_independent_mapping_reuses_port() {
        let mut rng = SimRng::new(1);
        let mut n = nat(NatConfig::full_cone());
        let inside = sa("10.0.0.2:5000");
        let p1 = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.1:1"), &mut rng)
            .unwrap();
        let p2 = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.2:2"), &mut rng)
            .unwrap();
        assert_eq!(p1, p2);
        assert_eq!(
            n.inbound_udp(Duration::ZERO, sa("198.18.9.9:9"), p1),
            Ok(inside)
        );
    }

    #[test]
    fn address_dependent_mapping_splits_by_ip_only() {
        let mut rng = SimRng::new(1);
        let mut n = nat(NatConfig {
            mapping: MappingBehavior::AddressDependent,
            ..NatConfig::full_cone()
        });
        let inside = sa("10.0.0.2:5000");
        let a = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.1:1"), &mut rng)
            .unwrap();
        let b = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.1:2"), &mut rng)
            .unwrap();
        let c = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.2:1"), &mut rng)
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn allocation_policies() {
        let mut rng = SimRng::new(3);
        let mut n = nat(NatConfig {
            port_allocation: PortAllocation::Preserve,
            ..NatConfig::symmetric()
        });
        let inside = sa("10.0.0.2:5000");
        let first = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.1:1"), &mut rng)
            .unwrap();
        assert_eq!(first, 5000);
        let second = n
            .outbound_udp(Duration::ZERO, inside, sa("198.18.1.1:2"), &mut rng)
            .unwrap();
        assert_ne!(second, 5000);

        let mut s = nat(NatConfig {
            port_allocation: PortAllocation::Sequential,
            port_range: 40000..=40001,
            ..NatConfig::symmetric()
        });
        let ports: Vec<u16> = (1..=3)
            .map(|i| {
                s.outbound_udp(
                    Duration::ZERO,
                    inside,
                    sa(&format!("198.18.1.1:{i}")),
                    &mut rng,
                )
            })
            .map(|r| r.unwrap_or(0))
            .collect();
        assert_eq!(ports, vec![40000, 40001, 0]);
        assert_eq!(
            s.outbound_udp(Duration::ZERO, inside, sa("198.18.1.1:9"), &mut rng),
            Err(NatRefusal::PortsExhausted)
        );
        // Expiry frees ports.
        assert!(s
            .outbound_udp(
                Duration::from_secs(31),
                inside,
                sa("198.18.1.1:9"),
                &mut rng
            )
            .is_ok());
    }

    #[test]
    fn tcp_ports_are_reserved_and_released() {
        let mut rng = SimRng::new(3);
        let mut n = nat(NatConfig {
            port_allocation: PortAllocation::Preserve,
            ..NatConfig::full_cone()
        });
        assert_eq!(n.allocate_tcp(6000, &mut rng), Ok(6000));
        let other = n.allocate_tcp(6000, &mut rng).unwrap();
        assert_ne!(other, 6000);
        n.release_tcp(6000);
        assert_eq!(n.allocate_tcp(6000, &mut rng), Ok(6000));
    }

    #[test]
    fn an_unsolicited_packet_pushes_the_later_mapping_to_its_sender_onto_a_new_port() {
        let mut rng = SimRng::new(4);
        let inside = sa("10.0.0.2:5000");
        let (server, peer) = (sa("198.18.1.1:4000"), sa("198.18.2.1:5000"));
        let t = Duration::ZERO;
        let mut n = nat(NatConfig::linux_masquerade());
        assert_eq!(n.outbound_udp(t, inside, server, &mut rng), Ok(5000));
        // The peer's packet arrives before Alice sent to the peer: refused, but remembered.
        assert_eq!(n.inbound_udp(t, peer, 5000), Err(NatRefusal::Filtered));
        let moved = n.outbound_udp(t, inside, peer, &mut rng).unwrap();
        assert_ne!(
            moved, 5000,
            "(peer, 5000) is taken: the peer gets a port of its own"
        );
        assert_eq!(n.outbound_udp(t, inside, peer, &mut rng), Ok(moved));
        assert_eq!(n.outbound_udp(t, inside, server, &mut rng), Ok(5000));
        assert_eq!(n.inbound_udp(t, peer, moved), Ok(inside));
        assert_eq!(n.inbound_udp(t, peer, 5000), Err(NatRefusal::Filtered));
        assert_eq!(n.mappings(t).len(), 2);
        // Once the entry expired (the peer stopped sending), a new flow keeps the port again.
        let later = Duration::from_secs(31);
        let other = sa("198.18.3.1:5000");
        assert_eq!(n.inbound_udp(t, other, 5000), Err(NatRefusal::Filtered));
        assert_eq!(n.outbound_udp(later, inside, other, &mut rng), Ok(5000));

        // Without the clash, the same order keeps one port.
        let mut n = nat(NatConfig {
            conntrack_clash: false,
            ..NatConfig::linux_masquerade()
        });
        assert_eq!(n.outbound_udp(t, inside, server, &mut rng), Ok(5000));
        assert_eq!(n.inbound_udp(t, peer, 5000), Err(NatRefusal::Filtered));
        assert_eq!(n.outbound_udp(t, inside, peer, &mut rng), Ok(5000));
        assert_eq!(n.inbound_udp(t, peer, 5000), Ok(inside));
    }

    #[test]
    fn a_packet_to_an_unmapped_port_also_takes_the_pair() {
        let mut rng = SimRng::new(5);
        let inside = sa("10.0.0.2:5000");
        let peer = sa("198.18.2.1:5000");
        let t = Duration::ZERO;
        let mut n = nat(NatConfig::linux_masquerade());
        assert_eq!(n.inbound_udp(t, peer, 5000), Err(NatRefusal::NoMapping));
        let port = n.outbound_udp(t, inside, peer, &mut rng).unwrap();
        assert_ne!(port, 5000);
        assert_eq!(n.inbound_udp(t, peer, port), Ok(inside));
        // Another destination still gets the internal port.
        assert_eq!(
            n.outbound_udp(t, inside, sa("198.18.4.1:1"), &mut rng),
            Ok(5000)
        );
    }
}
