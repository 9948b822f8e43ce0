//! A sans-IO STUN server (RFC 8489 Binding) with RFC 5780 NAT-behaviour discovery.
//!
//! Super nodes answer Binding requests so that ordinary nodes learn their reflexive address
//! and, with the RFC 5780 tests, how their NAT maps and filters.
//!
//! # Addresses
//!
//! The server is configured with its **primary** address `A1:P1` and, for RFC 5780, an
//! optional **alternate** `A2:P2` that differs in both IP and port. With an alternate the
//! server answers from all four combinations `{A1, A2} × {P1, P2}`
//! ([`StunServer::local_addresses`] lists them, for the driver to bind), and picks the one it
//! answers from with [`Transmit::source`]:
//!
//! | CHANGE-REQUEST | answers from (request arrived on `Da:Dp`) | OTHER-ADDRESS |
//! |---|---|---|
//! | absent or no flags | `Da:Dp` | `Ca:Cp` |
//! | change IP | `Ca:Dp` | `Ca:Cp` |
//! | change port | `Da:Cp` | `Ca:Cp` |
//! | change IP and port | `Ca:Cp` | `Ca:Cp` |
//!
//! where `Ca` is the configured IP that is not `Da` and `Cp` the port that is not `Dp`
//! (RFC 5780 §6.1, table 1). A request that arrived on an address that is none of the four
//! (a driver bound to a wildcard address) is treated as having arrived on the primary.
//!
//! # Answers
//!
//! A Binding success carries XOR-MAPPED-ADDRESS, MAPPED-ADDRESS (RFC 5780 §6.1 asks for both),
//! RESPONSE-ORIGIN (the address it is sent from), OTHER-ADDRESS (only with an alternate),
//! SOFTWARE and FINGERPRINT.
//!
//! RESPONSE-PORT (RFC 5780 §7.5) is honoured: the response goes to the request's source IP at
//! that port (`turnutils_stunclient` uses it in its RFC 5780 tests); a malformed one, or port
//! 0, gets 400 (Bad Request).
//!
//! A request carrying a comprehension-required attribute the server does not understand gets
//! a 420 (Unknown Attribute) error listing them in UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1). That
//! includes RFC 5780's PADDING, which this server does not implement (the PADDING tests send
//! datagrams over [`natter_core::wire::stun::MAX_MESSAGE`], which are dropped anyway), and USERNAME /
//! MESSAGE-INTEGRITY: it does no authentication. Error responses go to the request's source.
//!
//! **Without an alternate**, a request carrying CHANGE-REQUEST (whatever its flags) also gets
//! 420 with UNKNOWN-ATTRIBUTES naming CHANGE-REQUEST, and no response carries OTHER-ADDRESS:
//! RFC 5780 §6 says a server that cannot answer from a second IP "MUST NOT include an
//! OTHER-ADDRESS attribute in any Response and MUST respond with a 420 (Unknown Attribute) to
//! any Request with a CHANGE-REQUEST attribute". It never ignores the attribute, which would
//! make a client believe its NAT filters nothing. (coturn 4.6.1 also answers 420.)
//!
//! Datagrams that are not valid STUN, STUN messages that are not requests, and requests for
//! other methods than Binding are dropped silently and counted ([`StunServerStats`]): no error
//! responses to junk, so the server is no better a reflector than it has to be.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use natter_core::sansio::{Destination, Input, Machine, Transmit};
use natter_core::wire::stun::{kind, Attribute, Class, Message, BINDING};

/// The SOFTWARE attribute a server sends unless told otherwise.
pub const DEFAULT_SOFTWARE: &str = concat!("natter ", env!("CARGO_PKG_VERSION"));

/// Why a [`StunServer`] configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunConfigError {
    /// The alternate shares the primary's IP or port, or is of another address family.
    #[error(
        "alternate {other} must differ from primary {primary} in both IP and port, same family"
    )]
    BadAlternate {
        /// The primary address.
        primary: SocketAddr,
        /// The refused alternate.
        other: SocketAddr,
    },
}

/// What the server has done, counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StunServerStats {
    /// Binding requests answered with a success response.
    pub success_responses: u64,
    /// Binding requests answered with an error response (420 or 400).
    pub error_responses: u64,
    /// Datagrams dropped because they are not valid STUN messages.
    pub malformed: u64,
    /// Valid STUN messages dropped because they are not requests.
    pub not_requests: u64,
    /// Requests dropped because their method is not Binding.
    pub unsupported_methods: u64,
    /// Stream input ignored (this server speaks STUN over UDP only).
    pub stream_inputs: u64,
}

/// The STUN server machine. It has no timers and reports nothing through events
/// ([`Infallible`]); read its counters with [`StunServer::stats`].
#[derive(Debug)]
pub struct StunServer {
    primary: SocketAddr,
    other: Option<SocketAddr>,
    /// A second port on the primary IP (a host with one address can still change port).
    alt_port: Option<u16>,
    /// A partner super node answering "change IP" requests for us (a host with one address).
    partner: Option<SocketAddr>,
    software: String,
    transmits: VecDeque<Transmit>,
    forwards: VecDeque<PartnerForward>,
    stats: StunServerStats,
}

/// A request this server cannot answer itself ("answer from another IP" with no second IP):
/// the node sends it to the partner super node, which answers the client from its own
/// address with [`StunServer::answer_for_partner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartnerForward {
    /// The partner's primary address.
    pub partner: SocketAddr,
    /// The client, as this server saw it.
    pub client: SocketAddr,
    /// The request's transaction id.
    pub transaction: natter_core::wire::stun::TransactionId,
}

impl StunServer {
    /// A server answering on `primary`, with an optional RFC 5780 alternate address `other`
    /// that differs from `primary` in both IP and port.
    ///
    /// # Errors
    /// [`StunConfigError::BadAlternate`] when `other` shares the primary's IP or port or is of
    /// another family.
    pub fn new(primary: SocketAddr, other: Option<SocketAddr>) -> Result<Self, StunConfigError> {
        if let Some(o) = other {
            if o.ip() == primary.ip()
                || o.port() == primary.port()
                || o.is_ipv4() != primary.is_ipv4()
            {
                return Err(StunConfigError::BadAlternate { primary, other: o });
            }
        }
        Ok(Self {
            primary,
            other,
            alt_port: None,
            partner: None,
            software: DEFAULT_SOFTWARE.to_owned(),
            transmits: VecDeque::new(),
            forwards: VecDeque::new(),
            stats: StunServerStats::default(),
        })
    }

    /// A server on a host with a single IP: it changes port itself (answering from
    /// `alt_port` on the primary IP) and, once a partner is set ([`StunServer::set_partner`]),
    /// advertises the partner as OTHER-ADDRESS and has it answer "change IP" requests. Two
    /// super nodes together thus provide the RFC 5780 tests that need a second address.
    pub fn single_address(primary: SocketAddr, alt_port: u16) -> Self {
        let mut s = Self::new(primary, None).expect("no alternate to check");
        if alt_port != primary.port() {
            s.alt_port = Some(alt_port);
        }
        s
    }

    /// Set (or clear) the partner super node (its primary address).
    pub fn set_partner(&mut self, partner: Option<SocketAddr>) {
        if self.other.is_none() {
            self.partner = partner.filter(|p| p.ip() != self.primary.ip());
        }
    }

    /// The partner, if any.
    pub fn partner(&self) -> Option<SocketAddr> {
        self.partner
    }

    /// The next request to hand to the partner.
    pub fn poll_forward(&mut self) -> Option<PartnerForward> {
        self.forwards.pop_front()
    }

    /// Answer a Binding request that the partner `forwarded_by` received from `client` and
    /// could not answer from another IP itself. The answer leaves from our second port when we
    /// have one: the client may well have probed our primary address while joining, which
    /// would have opened even a port-restricted filter for it.
    pub fn answer_for_partner(
        &mut self,
        client: SocketAddr,
        transaction: natter_core::wire::stun::TransactionId,
        forwarded_by: SocketAddr,
    ) {
        let from = self
            .alt_port
            .map_or(self.primary, |p| SocketAddr::new(self.primary.ip(), p));
        self.send_success(transaction, client, client, from, Some(forwarded_by));
    }

    /// Replace the SOFTWARE attribute's text; an empty string leaves SOFTWARE out (some
    /// operators prefer not to advertise a version).
    pub fn with_software(mut self, software: impl Into<String>) -> Self {
        self.software = software.into();
        self
    }

    /// The primary address.
    pub fn primary(&self) -> SocketAddr {
        self.primary
    }

    /// The alternate address, if any.
    pub fn other(&self) -> Option<SocketAddr> {
        self.other
    }

    /// Every address the server answers from, for the driver to bind: the primary alone, or
    /// with an alternate `A1:P1`, `A2:P2`, `A1:P2`, `A2:P1` (primary first, alternate second).
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        match self.other {
            None => match self.alt_port {
                Some(p) => vec![self.primary, SocketAddr::new(self.primary.ip(), p)],
                None => vec![self.primary],
            },
            Some(o) => vec![
                self.primary,
                o,
                SocketAddr::new(self.primary.ip(), o.port()),
                SocketAddr::new(o.ip(), self.primary.port()),
            ],
        }
    }

    /// The counters.
    pub fn stats(&self) -> StunServerStats {
        self.stats
    }

    /// The address made of the alternate IP if `alt_ip` (else the primary's) and the
    /// alternate port if `alt_port`. Only called with an alternate, or with both false.
    fn combine(&self, alt_ip: bool, alt_port: bool) -> SocketAddr {
        let other = self.other.unwrap_or(self.primary);
        let ip = if alt_ip {
            other.ip()
        } else {
            self.primary.ip()
        };
        let port = if alt_port {
            other.port()
        } else {
            self.primary.port()
        };
        SocketAddr::new(ip, port)
    }

    /// Which of the four addresses `local` is, as (alternate IP?, alternate port?); anything
    /// else counts as the primary.
    fn position(&self, local: SocketAddr) -> (bool, bool) {
        let Some(other) = self.other else {
            return (false, false);
        };
        let ips = [self.primary.ip(), other.ip()];
        let ports = [self.primary.port(), other.port()];
        if ips.contains(&local.ip()) && ports.contains(&local.port()) {
            (local.ip() == other.ip(), local.port() == other.port())
        } else {
            (false, false)
        }
    }

    fn on_datagram(&mut self, source: SocketAddr, local: SocketAddr, data: &[u8]) {
        let Ok(request) = Message::decode(data) else {
            self.stats.malformed += 1;
            return;
        };
        if request.class != Class::Request {
            self.stats.not_requests += 1;
            return;
        }
        if request.method != BINDING {
            self.stats.unsupported_methods += 1;
            return;
        }
        let (ip_alt, port_alt) = self.position(local);
        let arrived_on = self.combine(ip_alt, port_alt);

        let mut unknown = request.unknown_required();
        let has_response_port = unknown.contains(&kind::RESPONSE_PORT);
        // PADDING (RFC 5780 §7.6) only makes the request large (a fragmentation test): it is
        // understood and ignored.
        unknown.retain(|k| *k != kind::RESPONSE_PORT && *k != kind::PADDING);
        let change = request.change_request();
        if let (Some((change_ip, change_port)), None) = (change, self.other) {
            // One address: a port change needs our second port, an IP change our partner.
            // With no way to change anything, every CHANGE-REQUEST gets 420 (RFC 5780 §6).
            let can = if self.partner.is_none() && self.alt_port.is_none() {
                false
            } else if change_ip {
                self.partner.is_some()
            } else {
                !change_port || self.alt_port.is_some()
            };
            if !can {
                unknown.push(kind::CHANGE_REQUEST);
            }
        }
        if !unknown.is_empty() {
            let attributes = vec![
                Attribute::ErrorCode {
                    code: 420,
                    reason: "Unknown Attribute".into(),
                },
                Attribute::UnknownAttributes(unknown),
            ];
            self.send_error(&request, source, arrived_on, attributes);
            return;
        }
        let destination = match request.response_port() {
            None if has_response_port => None,
            None => Some(source),
            Some(0) => None,
            Some(port) => Some(SocketAddr::new(source.ip(), port)),
        };
        let Some(destination) = destination else {
            let attributes = vec![Attribute::ErrorCode {
                code: 400,
                reason: "Bad Request".into(),
            }];
            self.send_error(&request, source, arrived_on, attributes);
            return;
        };

        let (change_ip, change_port) = change.unwrap_or((false, false));
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; they expect IPv4.
        let mapped = SocketAddr::new(source.ip().to_canonical(), source.port());
        if self.other.is_none() {
            if change_ip {
                if let Some(partner) = self.partner {
                    self.forwards.push_back(PartnerForward {
                        partner,
                        client: destination,
                        transaction: request.transaction,
                    });
                }
                return;
            }
            let from = match (change_port, self.alt_port) {
                (true, Some(p)) if local.port() == self.primary.port() => {
                    SocketAddr::new(self.primary.ip(), p)
                }
                (true, Some(_)) => self.primary,
                _ => local_or(self.primary, local),
            };
            let other = self.partner;
            self.send_success(request.transaction, mapped, destination, from, other);
            return;
        }
        let from = self.combine(ip_alt ^ change_ip, port_alt ^ change_port);
        let other = self.other.map(|_| self.combine(!ip_alt, !port_alt));
        self.send_success(request.transaction, mapped, destination, from, other);
    }

    /// A Binding success: the mapped address (XOR and plain), where it is sent from, the other
    /// address when there is one, SOFTWARE.
    fn send_success(
        &mut self,
        transaction: natter_core::wire::stun::TransactionId,
        mapped: SocketAddr,
        to: SocketAddr,
        from: SocketAddr,
        other: Option<SocketAddr>,
    ) {
        let mut attributes = vec![
            Attribute::XorMappedAddress(mapped),
            Attribute::MappedAddress(mapped),
            Attribute::ResponseOrigin(from),
        ];
        if let Some(o) = other {
            attributes.push(Attribute::OtherAddress(o));
        }
        self.push_software(&mut attributes);
        let response = Message {
            class: Class::Success,
            method: BINDING,
            transaction,
            attributes,
        };
        self.stats.success_responses += 1;
        self.send(to, from, &response);
    }

    fn send_error(
        &mut self,
        request: &Message,
        to: SocketAddr,
        from: SocketAddr,
        mut attributes: Vec<Attribute>,
    ) {
        self.push_software(&mut attributes);
        let response = Message {
            class: Class::Error,
            method: BINDING,
            transaction: request.transaction,
            attributes,
        };
        self.stats.error_responses += 1;
        self.send(to, from, &response);
    }

    fn push_software(&self, attributes: &mut Vec<Attribute>) {
        if !self.software.is_empty() {
            attributes.push(Attribute::Software(self.software.clone()));
        }
    }

    fn send(&mut self, to: SocketAddr, from: SocketAddr, message: &Message) {
        self.transmits.push_back(Transmit {
            destination: Destination::Udp(to),
            source: Some(from),
            payload: Bytes::from(message.encode()),
            ttl: None,
        });
    }
}

/// The local address a request arrived on when it is one of ours, else the primary.
fn local_or(primary: SocketAddr, local: SocketAddr) -> SocketAddr {
    if local.ip() == primary.ip() {
        local
    } else {
        primary
    }
}

impl Machine for StunServer {
    type Event = Infallible;

    fn handle_input(&mut self, _now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                source,
                local,
                data,
            } => self.on_datagram(source, local, data),
            _ => self.stats.stream_inputs += 1,
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::wire::stun::TransactionId;

    const A1P1: &str = "192.0.2.1:3478";
    const A2P2: &str = "192.0.2.2:3479";
    const A1P2: &str = "192.0.2.1:3479";
    const A2P1: &str = "192.0.2.2:3478";
    const CLIENT: &str = "203.0.113.7:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn server(alternate: bool) -> StunServer {
        StunServer::new(addr(A1P1), alternate.then(|| addr(A2P2))).unwrap()
    }

    fn feed(s: &mut StunServer, local: &str, data: &[u8]) -> Vec<Transmit> {
        s.handle_input(
            Instant::now(),
            Input::Datagram {
                source: addr(CLIENT),
                local: addr(local),
                data,
            },
        );
        assert!(s.poll_event().is_none());
        assert!(s.poll_timeout().is_none());
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn request(attributes: Vec<Attribute>) -> (TransactionId, Vec<u8>) {
        let tid = TransactionId([0x5A; 12]);
        let m = Message {
            attributes,
            ..Message::binding_request(tid)
        };
        (tid, m.encode())
    }

    fn change(change_ip: bool, change_port: bool) -> Vec<Attribute> {
        vec![Attribute::ChangeRequest {
            change_ip,
            change_port,
        }]
    }

    /// The one response to `data` arriving on `local`, and the address it is sent from.
    fn answer(s: &mut StunServer, local: &str, data: &[u8]) -> (Message, SocketAddr) {
        let out = feed(s, local, data);
        assert_eq!(out.len(), 1, "one response");
        let t = &out[0];
        assert_eq!(t.destination, Destination::Udp(addr(CLIENT)));
        (Message::decode(&t.payload).unwrap(), t.source.unwrap())
    }

    #[test]
    fn answers_binding_with_all_attributes() {
        let mut s = server(true);
        let (tid, req) = request(vec![]);
        let (m, from) = answer(&mut s, A1P1, &req);
        assert_eq!(from, addr(A1P1));
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.method, BINDING);
        assert_eq!(m.transaction, tid);
        assert_eq!(
            m.attributes,
            vec![
                Attribute::XorMappedAddress(addr(CLIENT)),
                Attribute::MappedAddress(addr(CLIENT)),
                Attribute::ResponseOrigin(addr(A1P1)),
                Attribute::OtherAddress(addr(A2P2)),
                Attribute::Software(DEFAULT_SOFTWARE.into()),
            ]
        );
        assert_eq!(s.stats().success_responses, 1);
    }

    #[test]
    fn change_request_picks_the_source_address() {
        // RFC 5780 §6.1 table 1, from each of the four addresses.
        let cases = [
            // (arrived on, change ip, change port, answers from, other-address)
            (A1P1, false, false, A1P1, A2P2),
            (A1P1, true, false, A2P1, A2P2),
            (A1P1, false, true, A1P2, A2P2),
            (A1P1, true, true, A2P2, A2P2),
            (A2P2, false, false, A2P2, A1P1),
            (A2P2, true, false, A1P2, A1P1),
            (A2P2, false, true, A2P1, A1P1),
            (A2P2, true, true, A1P1, A1P1),
            (A1P2, true, false, A2P2, A2P1),
            (A2P1, false, true, A2P2, A1P2),
        ];
        let mut s = server(true);
        for (local, ip, port, from, other) in cases {
            let (_, req) = request(change(ip, port));
            let (m, source) = answer(&mut s, local, &req);
            assert_eq!(source, addr(from), "{local} {ip} {port}");
            assert_eq!(m.response_origin(), Some(addr(from)));
            assert_eq!(m.other_address(), Some(addr(other)));
            assert_eq!(m.mapped_address(), Some(addr(CLIENT)));
        }
    }

    #[test]
    fn unknown_local_address_counts_as_primary() {
        let mut s = server(true);
        let (_, req) = request(change(true, true));
        let (m, from) = answer(&mut s, "0.0.0.0:3478", &req);
        assert_eq!(from, addr(A2P2));
        assert_eq!(m.other_address(), Some(addr(A2P2)));
    }

    #[test]
    fn without_alternate_change_request_gets_420() {
        let mut s = server(false);
        let (_, req) = request(vec![]);
        let (m, from) = answer(&mut s, A1P1, &req);
        assert_eq!(from, addr(A1P1));
        assert_eq!(m.class, Class::Success);
        assert_eq!(
            m.other_address(),
            None,
            "no OTHER-ADDRESS without an alternate"
        );
        assert_eq!(m.response_origin(), Some(addr(A1P1)));

        for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let (tid, req) = request(change(ip, port));
            let (m, from) = answer(&mut s, A1P1, &req);
            assert_eq!(from, addr(A1P1));
            assert_eq!(m.class, Class::Error);
            assert_eq!(m.transaction, tid);
            assert_eq!(m.error_code(), Some(420));
            assert!(m
                .attributes
                .contains(&Attribute::UnknownAttributes(vec![kind::CHANGE_REQUEST])));
            assert_eq!(m.mapped_address(), None);
        }
        assert_eq!(s.stats().error_responses, 4);
    }

    #[test]
    fn unknown_comprehension_required_gets_420() {
        let mut s = server(true);
        let (_, req) = request(vec![
            Attribute::Unknown {
                kind: kind::USERNAME,
                value: b"user".to_vec(),
            },
            // Comprehension-optional: ignored.
            Attribute::Unknown {
                kind: 0x8029,
                value: vec![0; 8],
            },
            Attribute::Unknown {
                kind: kind::PADDING,
                value: vec![0; 8],
            },
        ]);
        let (m, from) = answer(&mut s, A2P2, &req);
        assert_eq!(
            from,
            addr(A2P2),
            "errors come from where the request arrived"
        );
        assert_eq!(m.class, Class::Error);
        assert_eq!(m.error_code(), Some(420));
        // PADDING is understood (RFC 5780's fragmentation test) and not listed.
        assert!(m
            .attributes
            .contains(&Attribute::UnknownAttributes(vec![kind::USERNAME])));

        // Comprehension-optional unknown attributes alone are ignored.
        let (_, req) = request(vec![Attribute::Unknown {
            kind: 0x8029,
            value: vec![0; 8],
        }]);
        assert_eq!(answer(&mut s, A1P1, &req).0.class, Class::Success);
    }

    #[test]
    fn response_port_redirects_the_answer() {
        let mut s = server(true);
        let port = |value: Vec<u8>| Attribute::Unknown {
            kind: kind::RESPONSE_PORT,
            value,
        };
        let (tid, req) = request(vec![
            port(vec![0xc2, 0xc1, 0, 0]),
            Attribute::ChangeRequest {
                change_ip: true,
                change_port: true,
            },
        ]);
        let out = feed(&mut s, A1P1, &req);
        assert_eq!(out.len(), 1);
        let client = addr(CLIENT);
        assert_eq!(
            out[0].destination,
            Destination::Udp(SocketAddr::new(client.ip(), 0xc2c1))
        );
        assert_eq!(out[0].source, Some(addr(A2P2)));
        let m = Message::decode(&out[0].payload).unwrap();
        assert_eq!(m.transaction, tid);
        assert_eq!(
            m.mapped_address(),
            Some(client),
            "the request's source, not the port"
        );

        for bad in [vec![0, 0, 0, 0], vec![1]] {
            let (_, req) = request(vec![port(bad)]);
            let (m, _) = answer(&mut s, A1P1, &req);
            assert_eq!(m.class, Class::Error);
            assert_eq!(m.error_code(), Some(400));
        }
        assert_eq!(s.stats().error_responses, 2);
    }

    #[test]
    fn drops_junk_and_non_requests_silently() {
        let mut s = server(true);
        assert!(feed(&mut s, A1P1, b"").is_empty());
        assert!(feed(&mut s, A1P1, &[0x51; 40]).is_empty());
        let (_, mut req) = request(vec![]);
        let last = req.len() - 1;
        req[last] ^= 1; // bad FINGERPRINT
        assert!(feed(&mut s, A1P1, &req).is_empty());
        assert_eq!(s.stats().malformed, 3);

        let tid = TransactionId([1; 12]);
        for class in [Class::Indication, Class::Success, Class::Error] {
            let m = Message {
                class,
                ..Message::binding_request(tid)
            };
            assert!(feed(&mut s, A1P1, &m.encode()).is_empty());
        }
        assert_eq!(s.stats().not_requests, 3);

        let allocate = Message {
            method: 0x0003,
            ..Message::binding_request(tid)
        };
        assert!(feed(&mut s, A1P1, &allocate.encode()).is_empty());
        assert_eq!(s.stats().unsupported_methods, 1);

        s.handle_input(
            Instant::now(),
            Input::Stream {
                stream: natter_core::sansio::StreamId(1),
                remote: addr(CLIENT),
                data: &req,
            },
        );
        assert!(s.poll_transmit().is_none());
        assert_eq!(s.stats().stream_inputs, 1);
        assert_eq!(s.stats().success_responses + s.stats().error_responses, 0);
    }

    #[test]
    fn requests_without_fingerprint_are_answered() {
        let mut s = server(false);
        let mut req = Message::binding_request(TransactionId([9; 12])).encode();
        req.truncate(20);
        req[3] = 0;
        let (m, _) = answer(&mut s, A1P1, &req);
        assert_eq!(m.class, Class::Success);
    }

    #[test]
    fn ipv4_mapped_clients_get_ipv4_and_ipv6_works() {
        let mut s = StunServer::new(addr("[2001:db8::1]:3478"), Some(addr("[2001:db8::2]:3479")))
            .unwrap()
            .with_software("");
        let (_, req) = request(vec![]);
        s.handle_input(
            Instant::now(),
            Input::Datagram {
                source: addr("[::ffff:198.51.100.9]:5000"),
                local: addr("[2001:db8::1]:3478"),
                data: &req,
            },
        );
        let t = s.poll_transmit().unwrap();
        let m = Message::decode(&t.payload).unwrap();
        assert_eq!(m.mapped_address(), Some(addr("198.51.100.9:5000")));
        assert_eq!(m.other_address(), Some(addr("[2001:db8::2]:3479")));
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, Attribute::Software(_))));
    }

    #[test]
    fn configuration_checks_and_addresses() {
        for bad in [A1P2, A2P1, "[2001:db8::2]:3479"] {
            assert!(
                StunServer::new(addr(A1P1), Some(addr(bad))).is_err(),
                "{bad}"
            );
        }
        assert_eq!(server(false).local_addresses(), vec![addr(A1P1)]);
        assert_eq!(
            server(true).local_addresses(),
            vec![addr(A1P1), addr(A2P2), addr(A1P2), addr(A2P1)]
        );
        assert_eq!(server(true).primary(), addr(A1P1));
        assert_eq!(server(true).other(), Some(addr(A2P2)));
    }
}
