//! Helpers for tests, benchmarks, simulations and demos: a throwaway login authority that
//! certifies devices on the spot, and a loop that pumps packets between two endpoints.
//!
//! Real deployments get certificates from the login server instead.

use std::net::SocketAddr;
use std::time::Instant;

use crate::crypto::{Authority, DeviceIdentity, TrustedAuthorities, UnixTime, UserName};
use crate::crypto::{Capabilities, LocalIdentity};
use crate::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use crate::rng::Rng;
use crate::sansio::{Destination, Input, Machine};

/// The wall-clock time test networks pretend it is (2026-01-01).
pub const TEST_WALL: UnixTime = UnixTime(1_767_225_600);

/// A throwaway authority from a seed; every identity it makes trusts it.
#[derive(Debug)]
pub struct TestNetwork {
    authority: Authority,
    seed: u64,
}

impl TestNetwork {
    /// A network whose keys all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::from_seed(seed);
        Self {
            authority: Authority::generate(&mut rng),
            seed,
        }
    }

    /// The authority (to certify more devices, or to trust).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The trust anchors of this network.
    pub fn trusted(&self) -> TrustedAuthorities {
        TrustedAuthorities::new([self.authority.public()])
    }

    /// A certified identity for `user` (device keys derived from the seed and the name), valid
    /// for a day around [`TEST_WALL`].
    ///
    /// # Panics
    /// When `user` is not a valid [`UserName`] (a test bug).
    pub fn identity(&self, user: &str) -> LocalIdentity {
        let mut rng = self.rng_for(user);
        let device = DeviceIdentity::generate(&mut rng);
        let certificate = self.authority.certify(
            &UserName::parse(user).expect("valid test user name"),
            device.dh_public(),
            device.signing_public(),
            UnixTime(TEST_WALL.0 - 86_400),
            UnixTime(TEST_WALL.0 + 86_400),
        );
        LocalIdentity {
            device,
            certificate,
            trusted: self.trusted(),
            capabilities: Capabilities::VOICE.union(Capabilities::CHAT),
        }
    }

    /// An endpoint for `user` with default configuration, anchored at `now` = [`TEST_WALL`].
    pub fn endpoint(&self, user: &str, now: Instant) -> Endpoint {
        let seed = self.rng_for(&format!("{user}/endpoint")).bytes32();
        Endpoint::new(EndpointConfig::new(
            self.identity(user),
            seed,
            TEST_WALL,
            now,
        ))
    }

    fn rng_for(&self, label: &str) -> Rng {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.seed.to_be_bytes());
        for (i, b) in label.bytes().enumerate() {
            seed[8 + i % 24] ^= b.rotate_left(i as u32 % 8);
        }
        seed[31] ^= label.len() as u8;
        Rng::from_seed_bytes(seed)
    }
}

/// Deliver every pending transmit between two endpoints, instantly and without loss, until
/// both are quiet. Returns the events each side produced. For unit tests and doc examples; the
/// simulator (`natter-sim`) models real networks.
pub fn pump(
    a: &mut Endpoint,
    a_addr: SocketAddr,
    b: &mut Endpoint,
    b_addr: SocketAddr,
    now: Instant,
) -> (Vec<EndpointEvent>, Vec<EndpointEvent>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            if t.destination == Destination::Udp(b_addr) {
                b.handle_input(
                    now,
                    Input::Datagram {
                        source: a_addr,
                        local: b_addr,
                        data: &t.payload,
                    },
                );
            }
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            if t.destination == Destination::Udp(a_addr) {
                a.handle_input(
                    now,
                    Input::Datagram {
                        source: b_addr,
                        local: a_addr,
                        data: &t.payload,
                    },
                );
            }
        }
        ea.extend(std::iter::from_fn(|| a.poll_event()));
        eb.extend(std::iter::from_fn(|| b.poll_event()));
        if !moved {
            return (ea, eb);
        }
    }
}
