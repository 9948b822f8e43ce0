//! The Noise handshake between two devices, through `snow`.
//!
//! Patterns: `Noise_XX_25519_ChaChaPoly_BLAKE2s` when neither side knows the other's static
//! key, `Noise_IK_25519_ChaChaPoly_BLAKE2s` when the initiator learnt the responder's static
//! key from the global index (one round trip fewer). The prologue binds the protocol name and
//! version, so a downgrade changes the handshake hash and fails.
//!
//! Each side's handshake payload ([`HandshakePayload`]) carries its supported protocol
//! versions, its [`Capabilities`] and its [`Certificate`]. The payload is only sent where Noise
//! already encrypts it (XX messages 2 and 3, IK messages 1 and 2), so certificates (and thus
//! user names) never travel in the clear. Each side checks that the peer's certificate is valid
//! *and binds the very static key Noise authenticated* ([`CertError::WrongKey`] otherwise).
//!
//! Diffie-Hellman goes through [`x25519_dalek`] in our own `snow` resolver, which refuses
//! non-contributory results (a low-order public key yields an all-zero shared secret), and
//! ephemeral keys come from the caller's seeded [`Rng`], never from the OS.

use std::time::Instant;

use bytes::{BufMut, BytesMut};
use snow::params::{DHChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::Session;
use crate::crypto::{CertError, Certificate, DeviceIdentity, TrustedAuthorities, UnixTime};
use crate::rng::Rng;
use crate::wire::packet::{Packet, Pattern, SessionIndex, MAX_NOISE_MESSAGE};
use crate::wire::{DecodeError, Reader, PROTOCOL_VERSION};

const PROLOGUE: &[u8] = b"natter/1";
const XX: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
const IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Feature bits a peer announces in its handshake, so neither side sends what the other cannot
/// read. Unknown bits are kept and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Capabilities(pub u32);

impl Capabilities {
    /// Voice calls.
    pub const VOICE: Self = Self(1 << 0);
    /// Chat messages.
    pub const CHAT: Self = Self(1 << 1);
    /// File transfer.
    pub const FILE_TRANSFER: Self = Self(1 << 2);
    /// Can mix a conference.
    pub const CONFERENCE_MIXER: Self = Self(1 << 3);
    /// Can act as a super node (relay, index).
    pub const SUPER_NODE: Self = Self(1 << 4);
    /// Moves a call's direct paths to fresh UDP ports after a NAT change and follows a peer
    /// that does (the `fresh` flag of `CallCandidates`). Every node sets it.
    pub const FRESH_PORTS: Self = Self(1 << 5);
    /// Reads media in the short envelope (the counter's low 32 bits on the wire; see
    /// `crate::wire::packet`). Every endpoint sets it.
    pub const SHORT_MEDIA: Self = Self(1 << 6);
    /// Reads the extension of media reports (`MediaReport::ext`: loss runs, from which the
    /// sender tells bursty loss from random loss, and the queuing delay and received rate
    /// its congestion controller follows). Every endpoint sets it.
    pub const REPORT_EXT: Self = Self(1 << 7);

    /// Both sets.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// True when every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What each side says about itself inside the encrypted handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakePayload {
    /// Oldest protocol version spoken.
    pub min_version: u8,
    /// Newest protocol version spoken.
    pub max_version: u8,
    /// Features.
    pub capabilities: Capabilities,
    /// A value the initiator increases with every IK initiation (wall-clock based), so a
    /// responder can refuse a replayed IK message 1. Zero where it is not used.
    pub timestamp: u64,
    /// The sender's certificate.
    pub certificate: Certificate,
    /// The token that proves a reset of this session comes from the sender ([`reset_token`]
    /// of the index it chose for the session). Absent from peers that cannot reset.
    pub reset_token: Option<[u8; RESET_TOKEN_LEN]>,
}

/// Length of a session reset token.
pub const RESET_TOKEN_LEN: usize = 16;

/// The token a device gives a peer with each session it accepts or opens, for the session
/// index it chose: a later run of the same device (the same keys, nothing else remembered)
/// computes it again for a packet that names an index it does not know, and answers with a
/// reset ([`crate::wire::packet::Packet::Reset`]) that the peer can check and no one else can
/// forge: the peer then drops the session at once instead of waiting for its idle timeout.
/// (QUIC's stateless reset, keyed by the device's static secret.)
pub fn reset_token(device: &DeviceIdentity, index: SessionIndex) -> [u8; RESET_TOKEN_LEN] {
    use blake2::{Blake2s256, Digest};
    let (dh, _) = device.secret_bytes();
    let mut h = Blake2s256::new();
    h.update(b"natter-reset-token-v1");
    h.update(dh);
    h.update(index.0.to_be_bytes());
    let digest = h.finalize();
    let mut token = [0u8; RESET_TOKEN_LEN];
    token.copy_from_slice(&digest[..RESET_TOKEN_LEN]);
    token
}

impl HandshakePayload {
    /// Append the encoded payload.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.min_version);
        out.put_u8(self.max_version);
        out.put_u32(self.capabilities.0);
        out.put_u64(self.timestamp);
        self.certificate.encode(out);
        if let Some(token) = &self.reset_token {
            out.put_slice(token);
        }
    }

    /// Decode a payload.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let min_version = r.u8()?;
        let max_version = r.u8()?;
        if min_version > max_version {
            return Err(DecodeError::Invalid("version range"));
        }
        let capabilities = Capabilities(r.u32()?);
        let timestamp = r.u64()?;
        let certificate = Certificate::read(&mut r)?;
        let reset_token = match r.remaining() {
            0 => None,
            RESET_TOKEN_LEN => Some(r.array::<RESET_TOKEN_LEN>()?),
            _ => return Err(DecodeError::Invalid("reset token length")),
        };
        r.finish()?;
        Ok(Self {
            min_version,
            max_version,
            capabilities,
            timestamp,
            certificate,
            reset_token,
        })
    }
}

/// Why a handshake failed. A failed handshake leaves no session behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The Noise message did not decrypt or parse (includes forged and replayed messages).
    #[error("noise: {0}")]
    Noise(String),
    /// The Diffie-Hellman result was non-contributory (a low-order point was sent).
    #[error("non-contributory Diffie-Hellman result")]
    LowOrderPoint,
    /// The handshake payload was malformed.
    #[error("handshake payload: {0}")]
    Payload(#[from] DecodeError),
    /// The peer's certificate was refused.
    #[error("peer certificate: {0}")]
    Certificate(#[from] CertError),
    /// No protocol version in common.
    #[error("no common protocol version (peer speaks {min}..={max})")]
    Version {
        /// The peer's oldest version.
        min: u8,
        /// The peer's newest version.
        max: u8,
    },
    /// The packet does not belong at this point of the handshake.
    #[error("unexpected handshake message")]
    Unexpected,
}

impl From<snow::Error> for HandshakeError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Dh => Self::LowOrderPoint,
            other => Self::Noise(other.to_string()),
        }
    }
}

/// Our side of handshakes: who we are and whom we trust.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// Our device keys.
    pub device: DeviceIdentity,
    /// Our certificate from the login authority.
    pub certificate: Certificate,
    /// Authorities whose certificates we accept.
    pub trusted: TrustedAuthorities,
    /// Features we announce.
    pub capabilities: Capabilities,
}

impl LocalIdentity {
    /// Our payload for a session whose index on our side is `index`.
    fn payload(&self, timestamp: u64, index: SessionIndex) -> Vec<u8> {
        let mut b = BytesMut::new();
        HandshakePayload {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            capabilities: self.capabilities,
            timestamp,
            certificate: self.certificate.clone(),
            reset_token: Some(reset_token(&self.device, index)),
        }
        .encode(&mut b);
        b.to_vec()
    }
}

/// What a completed handshake established about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's verified certificate (user, device, keys).
    pub certificate: Certificate,
    /// The peer's features.
    pub capabilities: Capabilities,
    /// The protocol version both speak.
    pub version: u8,
    /// The peer's handshake timestamp (see [`HandshakePayload::timestamp`]).
    pub timestamp: u64,
    /// The token a reset of this session from the peer must carry, if the peer gave one.
    pub reset_token: Option<[u8; RESET_TOKEN_LEN]>,
}

/// The result of a completed handshake.
#[derive(Debug)]
pub struct Established {
    /// Who the peer is.
    pub peer: PeerInfo,
    /// The data-plane session.
    pub session: Session,
}

/// What to do after feeding a handshake message.
#[derive(Debug)]
pub enum Step {
    /// Send this packet and wait for the peer's answer.
    Send(Vec<u8>),
    /// Send this packet (possibly none), and the session is established.
    Done(Option<Vec<u8>>, Box<Established>),
}

/// The fields of a received [`Packet::HandshakeInit`].
#[derive(Debug, Clone, Copy)]
pub struct InitMessage<'a> {
    /// XX or IK.
    pub pattern: Pattern,
    /// The initiator's session index.
    pub sender: SessionIndex,
    /// The Noise message.
    pub noise: &'a [u8],
}

/// One handshake in progress.
pub struct Handshake {
    state: snow::HandshakeState,
    pattern: Pattern,
    local_index: SessionIndex,
    remote_index: Option<SessionIndex>,
    identity: LocalIdentity,
    peer: Option<PeerInfo>,
    recipe: Recipe,
}

/// How a handshake was built, so an identical copy can be rebuilt: snow's rollback after a
/// failed read restores the hash and chaining key but not the cipher key, so a forgery that
/// passes the first AEAD of a message poisons the state. Building is deterministic in the
/// seed, so the rebuilt copy has the same ephemeral key and accepts the genuine message.
#[derive(Clone)]
enum Recipe {
    Initiator {
        responder_static: Option<[u8; 32]>,
        timestamp: u64,
        seed: [u8; 32],
    },
    Responder {
        pattern: Pattern,
        sender: SessionIndex,
        noise: Vec<u8>,
        seed: [u8; 32],
        now: Instant,
        wall: UnixTime,
    },
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("pattern", &self.pattern)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("initiator", &self.state.is_initiator())
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// Start a handshake as initiator. With `responder_static` the IK pattern is used, and
    /// `timestamp` (strictly increasing per initiator) lets the responder refuse replays.
    /// Returns the handshake and the first packet to send.
    pub fn initiate(
        identity: LocalIdentity,
        responder_static: Option<[u8; 32]>,
        timestamp: u64,
        local_index: SessionIndex,
        rng: &mut Rng,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let seed = rng.bytes32();
        Self::initiate_seeded(identity, responder_static, timestamp, local_index, seed)
    }

    fn initiate_seeded(
        identity: LocalIdentity,
        responder_static: Option<[u8; 32]>,
        timestamp: u64,
        local_index: SessionIndex,
        seed: [u8; 32],
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let (pattern, name) = if responder_static.is_some() {
            (Pattern::Ik, IK)
        } else {
            (Pattern::Xx, XX)
        };
        let secret = identity.device.dh_secret_bytes();
        let mut builder = snow::Builder::with_resolver(params(name), resolver(seed))
            .prologue(PROLOGUE)?
            .local_private_key(&secret)?;
        if let Some(rs) = responder_static.as_ref() {
            builder = builder.remote_public_key(rs)?;
        }
        let state = builder.build_initiator()?;
        let mut hs = Self {
            state,
            pattern,
            local_index,
            remote_index: None,
            identity,
            peer: None,
            recipe: Recipe::Initiator {
                responder_static,
                timestamp,
                seed,
            },
        };
        let payload = match pattern {
            // Zero padding only (message 1 of XX is not encrypted): see XX_INIT_PADDING.
            Pattern::Xx => vec![0u8; crate::endpoint::XX_INIT_PADDING],
            Pattern::Ik => hs.identity.payload(timestamp, local_index),
        };
        let noise = hs.write(&payload)?;
        let mut out = BytesMut::new();
        Packet::HandshakeInit {
            pattern,
            sender: local_index,
            noise: &noise,
        }
        .encode(&mut out);
        Ok((hs, out.to_vec()))
    }

    /// Answer a [`Packet::HandshakeInit`] as responder.
    pub fn respond(
        identity: LocalIdentity,
        init: InitMessage<'_>,
        local_index: SessionIndex,
        rng: &mut Rng,
        now: Instant,
        wall: UnixTime,
    ) -> Result<(Self, Step), HandshakeError> {
        let seed = rng.bytes32();
        Self::respond_seeded(identity, init, local_index, seed, now, wall)
    }

    fn respond_seeded(
        identity: LocalIdentity,
        init: InitMessage<'_>,
        local_index: SessionIndex,
        seed: [u8; 32],
        now: Instant,
        wall: UnixTime,
    ) -> Result<(Self, Step), HandshakeError> {
        let InitMessage {
            pattern,
            sender: initiator_index,
            noise,
        } = init;
        let name = match pattern {
            Pattern::Xx => XX,
            Pattern::Ik => IK,
        };
        let secret = identity.device.dh_secret_bytes();
        let state = snow::Builder::with_resolver(params(name), resolver(seed))
            .prologue(PROLOGUE)?
            .local_private_key(&secret)?
            .build_responder()?;
        let mut hs = Self {
            state,
            pattern,
            local_index,
            remote_index: Some(initiator_index),
            identity,
            peer: None,
            recipe: Recipe::Responder {
                pattern,
                sender: initiator_index,
                noise: noise.to_vec(),
                seed,
                now,
                wall,
            },
        };
        let payload = hs.read(noise)?;
        match pattern {
            // XX message 1 carries only zero padding.
            Pattern::Xx if payload.iter().any(|&b| b != 0) => {
                return Err(HandshakeError::Unexpected)
            }
            Pattern::Xx => {}
            Pattern::Ik => hs.accept_peer(&payload, wall)?,
        }
        let reply = hs.identity.payload(0, local_index);
        let noise = hs.write(&reply)?;
        let mut out = BytesMut::new();
        Packet::HandshakeResponse {
            sender: local_index,
            receiver: initiator_index,
            noise: &noise,
        }
        .encode(&mut out);
        let step = match pattern {
            Pattern::Ik => Step::Done(Some(out.to_vec()), Box::new(hs.finish(now)?)),
            Pattern::Xx => Step::Send(out.to_vec()),
        };
        Ok((hs, step))
    }

    /// Feed the responder's [`Packet::HandshakeResponse`] to the initiator.
    pub fn read_response(
        &mut self,
        responder_index: SessionIndex,
        noise: &[u8],
        now: Instant,
        wall: UnixTime,
    ) -> Result<Step, HandshakeError> {
        if !self.state.is_initiator() || self.remote_index.is_some() {
            return Err(HandshakeError::Unexpected);
        }
        let payload = self.read(noise)?;
        self.accept_peer(&payload, wall)?;
        self.remote_index = Some(responder_index);
        match self.pattern {
            Pattern::Ik => Ok(Step::Done(None, Box::new(self.finish(now)?))),
            Pattern::Xx => {
                let mine = self.identity.payload(0, self.local_index);
                let noise = self.write(&mine)?;
                let mut out = BytesMut::new();
                Packet::HandshakeFinal {
                    receiver: responder_index,
                    noise: &noise,
                }
                .encode(&mut out);
                Ok(Step::Done(Some(out.to_vec()), Box::new(self.finish(now)?)))
            }
        }
    }

    /// Feed the initiator's [`Packet::HandshakeFinal`] to the responder (XX only).
    pub fn read_final(
        &mut self,
        noise: &[u8],
        now: Instant,
        wall: UnixTime,
    ) -> Result<Established, HandshakeError> {
        if self.state.is_initiator() || self.pattern != Pattern::Xx || self.peer.is_some() {
            return Err(HandshakeError::Unexpected);
        }
        let payload = self.read(noise)?;
        self.accept_peer(&payload, wall)?;
        self.finish(now)
    }

    /// An identical copy of this handshake as it was right after our last message, for use
    /// after a forged or corrupted message made a read fail (see the recipe's documentation).
    pub fn rebuild(&self) -> Result<Self, HandshakeError> {
        match &self.recipe {
            Recipe::Initiator {
                responder_static,
                timestamp,
                seed,
            } => Self::initiate_seeded(
                self.identity.clone(),
                *responder_static,
                *timestamp,
                self.local_index,
                *seed,
            )
            .map(|(hs, _)| hs),
            Recipe::Responder {
                pattern,
                sender,
                noise,
                seed,
                now,
                wall,
            } => Self::respond_seeded(
                self.identity.clone(),
                InitMessage {
                    pattern: *pattern,
                    sender: *sender,
                    noise,
                },
                self.local_index,
                *seed,
                *now,
                *wall,
            )
            .map(|(hs, _)| hs),
        }
    }

    /// Our session index for this handshake.
    pub fn local_index(&self) -> SessionIndex {
        self.local_index
    }

    /// The pattern in use.
    pub fn pattern(&self) -> Pattern {
        self.pattern
    }

    fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut buf = vec![0u8; MAX_NOISE_MESSAGE];
        let n = self.state.write_message(payload, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn read(&mut self, noise: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if noise.len() > MAX_NOISE_MESSAGE {
            return Err(HandshakeError::Unexpected);
        }
        let mut buf = vec![0u8; noise.len()];
        let n = self.state.read_message(noise, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    fn accept_peer(&mut self, payload: &[u8], wall: UnixTime) -> Result<(), HandshakeError> {
        let p = HandshakePayload::decode(payload)?;
        if !(p.min_version..=p.max_version).contains(&PROTOCOL_VERSION) {
            return Err(HandshakeError::Version {
                min: p.min_version,
                max: p.max_version,
            });
        }
        let remote_static: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|s| s.try_into().ok())
            .ok_or(HandshakeError::Unexpected)?;
        p.certificate
            .verify_for_key(&self.identity.trusted, wall, &remote_static)?;
        self.peer = Some(PeerInfo {
            certificate: p.certificate,
            capabilities: p.capabilities,
            version: PROTOCOL_VERSION,
            timestamp: p.timestamp,
            reset_token: p.reset_token,
        });
        Ok(())
    }

    fn finish(&mut self, now: Instant) -> Result<Established, HandshakeError> {
        let peer = self.peer.clone().ok_or(HandshakeError::Unexpected)?;
        let remote = self.remote_index.ok_or(HandshakeError::Unexpected)?;
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::Unexpected);
        }
        let (i2r, r2i) = self.state.dangerously_get_raw_split();
        let (send, recv) = if self.state.is_initiator() {
            (i2r, r2i)
        } else {
            (r2i, i2r)
        };
        Ok(Established {
            peer,
            session: Session::new(self.local_index, remote, send, recv, now),
        })
    }
}

fn params(name: &str) -> NoiseParams {
    // The two names are constants that snow parses; a failure here is a build defect that every
    // handshake test would catch at once.
    name.parse().expect("valid Noise pattern name")
}

fn resolver(seed: [u8; 32]) -> Box<dyn CryptoResolver + Send> {
    Box::new(NatterResolver {
        rng: Rng::from_seed_bytes(seed),
    })
}

/// snow resolver: our X25519 (contributory check) and seeded randomness; snow's own
/// ChaChaPoly and BLAKE2s for the rest.
struct NatterResolver {
    rng: Rng,
}

impl CryptoResolver for NatterResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(self.rng.clone()))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(X25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[derive(Default)]
struct X25519 {
    secret: [u8; 32],
    public: [u8; 32],
}

impl X25519 {
    fn set_secret(&mut self, secret: [u8; 32]) {
        let s = StaticSecret::from(secret);
        self.public = PublicKey::from(&s).to_bytes();
        self.secret = s.to_bytes();
    }
}

impl Dh for X25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut s = [0u8; 32];
        let n = privkey.len().min(32);
        s[..n].copy_from_slice(&privkey[..n]);
        self.set_secret(s);
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut s = [0u8; 32];
        rng.try_fill_bytes(&mut s)?;
        self.set_secret(s);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.secret
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        // snow hands over its fixed-size key buffer; the key is its first 32 bytes.
        let pk: [u8; 32] = pubkey
            .get(..32)
            .and_then(|k| k.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = StaticSecret::from(self.secret).diffie_hellman(&PublicKey::from(pk));
        if !shared.was_contributory() {
            return Err(snow::Error::Dh);
        }
        out.get_mut(..32)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

impl Drop for X25519 {
    fn drop(&mut self) {
        self.secret = [0; 32];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestNetwork;
    use proptest::prelude::{any, proptest};

    proptest! {
        #[test]
        fn payload_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = HandshakePayload::decode(&data);
        }

        #[test]
        fn payload_roundtrip(
            min in 0u8..4,
            extra in 0u8..4,
            caps in any::<u32>(),
            ts in any::<u64>(),
            reset_token in any::<Option<[u8; RESET_TOKEN_LEN]>>(),
        ) {
            let certificate = TestNetwork::new(1).identity("alice").certificate;
            let p = HandshakePayload {
                min_version: min,
                max_version: min + extra,
                capabilities: Capabilities(caps),
                timestamp: ts,
                certificate,
                reset_token,
            };
            let mut b = BytesMut::new();
            p.encode(&mut b);
            assert_eq!(HandshakePayload::decode(&b).unwrap(), p);
        }
    }

    #[test]
    fn inverted_version_range_is_refused() {
        let certificate = TestNetwork::new(1).identity("alice").certificate;
        let mut b = BytesMut::new();
        HandshakePayload {
            min_version: 2,
            max_version: 1,
            capabilities: Capabilities::VOICE,
            timestamp: 0,
            certificate,
            reset_token: None,
        }
        .encode(&mut b);
        assert!(HandshakePayload::decode(&b).is_err());
    }

    /// A reset token is the device's own: the same device computes the same token for the
    /// same index after a restart, and no other device (or index) gives it.
    #[test]
    fn reset_tokens_are_per_device_and_index() {
        let net = TestNetwork::new(1);
        let alice = net.identity("alice").device;
        let (dh, signing) = alice.secret_bytes();
        let again = DeviceIdentity::from_secret_bytes(dh, signing);
        let bob = net.identity("bob").device;
        let i = SessionIndex(7);
        assert_eq!(reset_token(&alice, i), reset_token(&again, i));
        assert_ne!(reset_token(&alice, i), reset_token(&bob, i));
        assert_ne!(reset_token(&alice, i), reset_token(&alice, SessionIndex(8)));
    }
}
