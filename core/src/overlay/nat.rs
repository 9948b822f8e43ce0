//! NAT and firewall behaviour discovery (RFC 5780), as a sans-IO machine.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::rng::Rng;
use crate::sansio::{Destination, Input, Machine, Transmit};
use crate::wire::stun::{Attribute, Class, Message, TransactionId, BINDING};

/// How the NAT (if any) filters inbound packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filtering {
    /// Anyone may send to the mapping once it exists ("full cone").
    EndpointIndependent,
    /// Only IPs the node has sent to ("restricted cone").
    AddressDependent,
    /// Only exact IP and port pairs the node has sent to ("port-restricted cone").
    AddressAndPortDependent,
}

/// What the probe concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatType {
    /// A public address and no filtering: reachable by anyone (super-node material).
    Open,
    /// A public address behind a filtering firewall.
    PublicFiltered(Filtering),
    /// Endpoint-independent mapping with the given filtering: hole punching works.
    EndpointIndependent(Filtering),
    /// Address-dependent or address-and-port-dependent mapping: the port seen by a peer cannot
    /// be predicted; two such nodes need a relay.
    Symmetric,
    /// No UDP answer from the server at all: TCP only.
    UdpBlocked,
}

impl NatType {
    /// A short name for logs and user interfaces.
    pub fn describe(&self) -> &'static str {
        match self {
            NatType::Open => "open (public address, no filtering)",
            NatType::PublicFiltered(_) => "public address behind a firewall",
            NatType::EndpointIndependent(Filtering::EndpointIndependent) => {
                "NAT: endpoint-independent mapping and filtering (full cone)"
            }
            NatType::EndpointIndependent(Filtering::AddressDependent) => {
                "NAT: endpoint-independent mapping, address-dependent filtering"
            }
            NatType::EndpointIndependent(Filtering::AddressAndPortDependent) => {
                "NAT: endpoint-independent mapping, address-and-port-dependent filtering (port-restricted)"
            }
            NatType::Symmetric => "NAT: address-and-port-dependent mapping (symmetric)",
            NatType::UdpBlocked => "UDP blocked",
        }
    }
}

/// The probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatReport {
    /// The classification.
    pub nat: NatType,
    /// The node's address as the server saw it (absent when UDP is blocked).
    pub mapped: Option<SocketAddr>,
    /// How long the probe took.
    pub elapsed: Duration,
    /// False when the filtering could not be told apart for certain: the "change IP" answer
    /// came from an IP the node had already sent to (a partner super node it probed while
    /// joining), so an address-dependent filter lets it in as if it filtered nothing. Behind
    /// a NAT the report then says address-dependent, the conservative reading. On a public
    /// address an answer from a port the node never sent to still shows that nothing filters
    /// by port (what stateful firewalls do); the report says open, uncertain.
    pub filtering_certain: bool,
}

/// Why a probe could not classify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NatProbeError {
    /// The server did not give an OTHER-ADDRESS, so mapping and filtering cannot be tested.
    #[error("the STUN server has no second address (OTHER-ADDRESS)")]
    NoOtherAddress,
}

/// Events of a [`NatProbe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatEvent {
    /// The classification is complete.
    Classified(NatReport),
    /// The probe could not complete; `mapped` is what it learnt.
    Failed {
        /// Why.
        error: NatProbeError,
        /// The mapped address from the first test, if any.
        mapped: Option<SocketAddr>,
    },
}

/// Probe settings.
#[derive(Debug, Clone)]
pub struct NatProbeConfig {
    /// The STUN server's primary address.
    pub server: SocketAddr,
    /// The node's own addresses (to recognise "no NAT").
    pub local_addresses: Vec<SocketAddr>,
    /// Tries per test.
    pub attempts: u32,
    /// Time between tries.
    pub interval: Duration,
    /// Randomness for transaction ids.
    pub seed: [u8; 32],
    /// Addresses the node sent UDP to recently (besides the server): filters may be open
    /// for them (for their IPs, with an address-dependent filter).
    pub contacted: Vec<SocketAddr>,
}

impl NatProbeConfig {
    /// Defaults: 3 tries 200 ms apart.
    pub fn new(server: SocketAddr, local_addresses: Vec<SocketAddr>, seed: [u8; 32]) -> Self {
        Self {
            server,
            local_addresses,
            attempts: 3,
            interval: Duration::from_millis(200),
            seed,
            contacted: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Binding,
    Mapping,
    FilterChangeBoth,
    FilterChangePort,
}

/// The RFC 5780 probe.
///
/// NAT and firewall behaviour discovery (RFC 5780), as a sans-IO machine.
///
/// [`NatProbe`] talks to a STUN server that has a second address (OTHER-ADDRESS: another IP
/// and port; super nodes serve this) from the node's own socket, and classifies what sits
/// between the node and the Internet:
///
/// 1. **Binding** to the server's primary address. No answer after the retries: UDP is blocked.
///    The answer gives the mapped address `M1` and the server's other address `A`. If `M1` is
///    one of the node's own addresses there is no NAT.
/// 2. **Filtering**, first, while the node has contacted only the primary address: a Binding
///    to the primary address asking the server to answer from its other IP and port
///    (CHANGE-REQUEST). An answer means endpoint-independent filtering; otherwise asking for a
///    change of port only tells address-dependent (answer) from address-and-port-dependent
///    (none). (Run after the mapping tests, which send to the other IP, an address-dependent
///    filter would already be open for it and pass as endpoint-independent.)
/// 3. **Mapping** (behind a NAT): a Binding to another IP gives `M2`: to `A`'s IP with the
///    primary port (RFC 5780's test II), falling back to `A` itself when that goes unanswered
///    (a partner super node on another port). Not to `A` first: the filtering test's answer
///    from `A` reached the NAT unasked, and a Linux NAT (conntrack) keeps an entry for it that
///    forces the node's own later flow to `A` onto a new port, so a port-restricted cone looked
///    symmetric (seen in the network-namespace tests). `M2 == M1` means
///    endpoint-independent mapping, anything else an address-dependent or
///    address-and-port-dependent one, which are the same for hole punching ("symmetric": the
///    peer cannot predict the port), so RFC 5780's third mapping test is not needed. `A` may
///    be the same host's second address or a partner super node's
///    (`natter_overlay::stun::StunServer::single_address`).
///
/// Tests that are expected to go unanswered (filtering) cost their timeout; with the defaults
/// (3 tries, 200 ms apart) a full classification takes under 2 s in the worst case and a few
/// round trips in the common one.
#[derive(Debug)]
pub struct NatProbe {
    cfg: NatProbeConfig,
    rng: Rng,
    started: Instant,
    test: Option<Test>,
    transaction: TransactionId,
    destination: SocketAddr,
    change: Option<(bool, bool)>,
    tries: u32,
    next_try: Instant,
    m1: Option<SocketAddr>,
    m2: Option<SocketAddr>,
    other: Option<SocketAddr>,
    /// Where the mapping test goes if its first destination does not answer.
    mapping_fallback: Option<SocketAddr>,
    public: bool,
    filtering: Option<Filtering>,
    filtering_certain: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NatEvent>,
}

impl NatProbe {
    /// Start probing at `now` (the first Binding request is queued at once).
    pub fn new(cfg: NatProbeConfig, now: Instant) -> Self {
        let mut p = Self {
            rng: Rng::from_seed_bytes(cfg.seed),
            destination: cfg.server,
            cfg,
            started: now,
            test: None,
            transaction: TransactionId([0; 12]),
            change: None,
            tries: 0,
            next_try: now,
            m1: None,
            m2: None,
            other: None,
            mapping_fallback: None,
            public: false,
            filtering: None,
            filtering_certain: true,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        let server = p.cfg.server;
        p.start(now, Test::Binding, server, None);
        p
    }

    /// True once the probe has reported.
    pub fn is_done(&self) -> bool {
        self.test.is_none()
    }

    fn start(&mut self, now: Instant, test: Test, to: SocketAddr, change: Option<(bool, bool)>) {
        let mut id = [0u8; 12];
        self.rng.fill(&mut id);
        self.test = Some(test);
        self.transaction = TransactionId(id);
        self.destination = to;
        self.change = change;
        self.tries = 0;
        self.send(now);
    }

    fn send(&mut self, now: Instant) {
        let mut msg = Message::binding_request(self.transaction);
        if let Some((change_ip, change_port)) = self.change {
            msg.attributes.push(Attribute::ChangeRequest {
                change_ip,
                change_port,
            });
        }
        self.tries += 1;
        self.next_try = now + self.cfg.interval;
        self.transmits.push_back(Transmit {
            destination: Destination::Udp(self.destination),
            source: None,
            payload: Bytes::from(msg.encode()),
            ttl: None,
        });
    }

    fn finish(&mut self, now: Instant, nat: NatType) {
        self.test = None;
        self.events.push_back(NatEvent::Classified(NatReport {
            nat,
            mapped: self.m1,
            elapsed: now.saturating_duration_since(self.started),
            filtering_certain: self.filtering_certain,
        }));
    }

    fn fail(&mut self, error: NatProbeError) {
        self.test = None;
        self.events.push_back(NatEvent::Failed {
            error,
            mapped: self.m1,
        });
    }

    fn start_filtering(&mut self, now: Instant) {
        let server = self.cfg.server;
        self.start(now, Test::FilterChangeBoth, server, Some((true, true)));
    }

    /// The filtering test's outcome; for an answer to "change IP and port", `origin` is where
    /// it came from (RESPONSE-ORIGIN, else the server's other address).
    fn filtering_result(
        &mut self,
        now: Instant,
        mut filtering: Filtering,
        origin: Option<SocketAddr>,
    ) {
        let contacted_ip =
            origin.is_some_and(|o| self.cfg.contacted.iter().any(|c| c.ip() == o.ip()));
        let contacted_port = origin.is_some_and(|o| self.cfg.contacted.contains(&o));
        if filtering == Filtering::EndpointIndependent && contacted_ip {
            self.filtering_certain = false;
            // A filter open to the contacted IP lets the answer in whatever it does to
            // strangers. On a public address an answer from a port never sent to does show
            // that nothing filters by port, which is what stateful firewalls do: open.
            if !self.public || contacted_port {
                filtering = Filtering::AddressDependent;
            }
        }
        self.filtering = Some(filtering);
        if self.public {
            let nat = if filtering == Filtering::EndpointIndependent {
                NatType::Open
            } else {
                NatType::PublicFiltered(filtering)
            };
            return self.finish(now, nat);
        }
        match self.other {
            // RFC 5780 test II: the other IP with the primary port. When the other address
            // shares the server's IP (two super nodes on one host), that would be the server
            // itself and every mapping would look endpoint-independent: use `other` as is.
            Some(other) if other.ip() == self.cfg.server.ip() => {
                self.start(now, Test::Mapping, other, None)
            }
            Some(other) => {
                let test_two = SocketAddr::new(other.ip(), self.cfg.server.port());
                if test_two != other {
                    self.mapping_fallback = Some(other);
                }
                self.start(now, Test::Mapping, test_two, None)
            }
            None => self.fail(NatProbeError::NoOtherAddress),
        }
    }

    fn mapping_result(&mut self, now: Instant, symmetric: bool) {
        let filtering = self.filtering.unwrap_or(Filtering::AddressAndPortDependent);
        let nat = if symmetric {
            NatType::Symmetric
        } else {
            NatType::EndpointIndependent(filtering)
        };
        self.finish(now, nat);
    }

    /// A test got its answer.
    fn answered(&mut self, now: Instant, response: &Message) {
        let Some(test) = self.test else { return };
        let mapped = response.mapped_address();
        match test {
            Test::Binding => {
                let Some(m1) = mapped else { return };
                self.m1 = Some(m1);
                self.other = response.other_address();
                self.public = self.cfg.local_addresses.contains(&m1);
                if self.other.is_none() {
                    return self.fail(NatProbeError::NoOtherAddress);
                }
                self.start_filtering(now);
            }
            Test::Mapping => {
                let Some(m2) = mapped else { return };
                self.m2 = Some(m2);
                let symmetric = Some(m2) != self.m1;
                self.mapping_result(now, symmetric);
            }
            Test::FilterChangeBoth => {
                let origin = response.response_origin().or(self.other);
                self.filtering_result(now, Filtering::EndpointIndependent, origin)
            }
            Test::FilterChangePort => self.filtering_result(now, Filtering::AddressDependent, None),
        }
    }

    /// A test got no answer after every try.
    fn unanswered(&mut self, now: Instant) {
        let Some(test) = self.test else { return };
        match test {
            Test::Binding => self.finish(now, NatType::UdpBlocked),
            // The alternate address did not answer although the primary did: treat the
            // mapping as unpredictable (the safe assumption for hole punching).
            Test::Mapping => match self.mapping_fallback.take() {
                Some(other) => self.start(now, Test::Mapping, other, None),
                None => self.mapping_result(now, true),
            },
            Test::FilterChangeBoth => {
                let server = self.cfg.server;
                self.start(now, Test::FilterChangePort, server, Some((false, true)));
            }
            Test::FilterChangePort => {
                self.filtering_result(now, Filtering::AddressAndPortDependent, None)
            }
        }
    }
}

impl Machine for NatProbe {
    type Event = NatEvent;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        let Input::Datagram { data, .. } = input else {
            return;
        };
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        if msg.method != BINDING || msg.transaction != self.transaction {
            return;
        }
        match msg.class {
            Class::Success => self.answered(now, &msg),
            // A server that cannot change its address for us (no second IP, no partner) says
            // so: the filtering cannot be tested, rather than silently misread.
            Class::Error if self.change.is_some() => self.fail(NatProbeError::NoOtherAddress),
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.test.is_none() || now < self.next_try {
            return;
        }
        if self.tries >= self.cfg.attempts {
            self.unanswered(now);
        } else {
            self.send(now);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<NatEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.test.map(|_| self.next_try)
    }
}
