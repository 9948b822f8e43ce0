//! Device identities, the login authority, and user certificates.
//!
//! A **device** has two long-term keys: an X25519 static key (its Noise identity) and an
//! Ed25519 signing key (presence records, buddy lists, chat receipts). The **login authority**
//! (the login server's Ed25519 key) certifies both with a [`Certificate`] that binds a
//! [`UserName`], the [`DeviceId`], the two public keys and a validity window. Peers check a
//! certificate against the set of authority keys they trust ([`TrustedAuthorities`]: several at
//! once, for key rotation), and the Noise handshake checks that the certificate binds the very
//! static key Noise authenticated.
//!
//! Time here is wall-clock time passed in as [`UnixTime`]; nothing reads a clock.

use std::fmt;

use blake2::{Blake2s256, Digest};
use bytes::{BufMut, BytesMut};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey as DhPublic, StaticSecret};

use crate::rng::Rng;
use crate::wire::{DecodeError, Reader};

/// Seconds since the Unix epoch, passed in by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

/// A device's identifier: the first 16 bytes of BLAKE2s("natter-device-id" ‖ Ed25519 public key).
///
/// Derived, never chosen, so nobody can claim another device's id with their own key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 16]);

impl DeviceId {
    /// The id belonging to an Ed25519 public key.
    pub fn from_signing_key(key: &[u8; 32]) -> Self {
        let mut h = Blake2s256::new();
        h.update(b"natter-device-id");
        h.update(key);
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserNameError {
    /// Shorter than [`UserName::MIN_LEN`] or longer than [`UserName::MAX_LEN`].
    #[error("user names are {min} to {max} characters long", min = UserName::MIN_LEN, max = UserName::MAX_LEN)]
    Length,
    /// The first character is not an ASCII letter.
    #[error("user names start with a letter")]
    FirstChar,
    /// A character outside `a-z A-Z 0-9 . _ -`.
    #[error("user names may only contain letters, digits, '.', '_' and '-'")]
    Char,
}

/// A user name, stored in canonical (lower-case) form so uniqueness is case-insensitive.
///
/// Rules: 3 to 32 characters; ASCII letters, digits, `.`, `_` and `-`; the first character is a
/// letter. `Alice` and `alice` are the same user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    /// Shortest allowed name.
    pub const MIN_LEN: usize = 3;
    /// Longest allowed name.
    pub const MAX_LEN: usize = 32;

    /// Validate and canonicalise.
    pub fn parse(name: &str) -> Result<Self, UserNameError> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&name.len()) {
            return Err(UserNameError::Length);
        }
        if !name.as_bytes()[0].is_ascii_alphabetic() {
            return Err(UserNameError::FirstChar);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(UserNameError::Char);
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The canonical form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device's long-term secret keys.
#[derive(Clone)]
pub struct DeviceIdentity {
    dh: StaticSecret,
    signing: SigningKey,
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.device_id())
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// Generate fresh keys from the caller's randomness.
    pub fn generate(rng: &mut Rng) -> Self {
        Self::from_secret_bytes(rng.bytes32(), rng.bytes32())
    }

    /// Restore keys from their 32-byte secrets (X25519, then Ed25519).
    pub fn from_secret_bytes(dh: [u8; 32], signing: [u8; 32]) -> Self {
        Self {
            dh: StaticSecret::from(dh),
            signing: SigningKey::from_bytes(&signing),
        }
    }

    /// The secrets, for storage by the caller (X25519, then Ed25519). Keep them private.
    pub fn secret_bytes(&self) -> ([u8; 32], [u8; 32]) {
        (self.dh.to_bytes(), self.signing.to_bytes())
    }

    /// The X25519 public key (the Noise static key).
    pub fn dh_public(&self) -> [u8; 32] {
        DhPublic::from(&self.dh).to_bytes()
    }

    /// The Ed25519 public key.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_signing_key(&self.signing_public())
    }

    /// The X25519 secret, for the Noise handshake.
    pub(crate) fn dh_secret_bytes(&self) -> [u8; 32] {
        self.dh.to_bytes()
    }

    /// Sign `message` under a domain-separation `context`.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        self.signing.sign(&domain(context, message)).to_bytes()
    }

    /// Prove possession of the X25519 key to the holder of `peer_ephemeral`'s secret: a MAC
    /// over `message` keyed by the Diffie-Hellman of this device's key with that ephemeral key
    /// (see [`dh_mac`]). `None` when `peer_ephemeral` is a low-order point.
    pub fn dh_proof(
        &self,
        peer_ephemeral: &[u8; 32],
        context: &[u8],
        message: &[u8],
    ) -> Option<[u8; 32]> {
        let shared = self.dh.diffie_hellman(&DhPublic::from(*peer_ephemeral));
        shared
            .was_contributory()
            .then(|| dh_mac(shared.as_bytes(), context, message))
    }
}

/// The MAC of a proof of possession of an X25519 key: BLAKE2s-256 keyed with the shared secret
/// (the Diffie-Hellman of the proven key and a verifier's ephemeral key), over the
/// domain-separated `message`. Only the key's holder and the ephemeral's holder can compute it.
pub fn dh_mac(shared: &[u8; 32], context: &[u8], message: &[u8]) -> [u8; 32] {
    use blake2::digest::{KeyInit, Mac};
    let mut mac = <blake2::Blake2sMac256 as KeyInit>::new(&(*shared).into());
    mac.update(&domain(context, message));
    mac.finalize().into_bytes().into()
}

/// Check a proof made with [`DeviceIdentity::dh_proof`], as the holder of the ephemeral
/// `secret`, in constant time. Low-order `dh_public` keys never verify.
pub fn verify_dh_proof(
    secret: &[u8; 32],
    dh_public: &[u8; 32],
    context: &[u8],
    message: &[u8],
    proof: &[u8; 32],
) -> bool {
    use subtle::ConstantTimeEq;
    let shared = StaticSecret::from(*secret).diffie_hellman(&DhPublic::from(*dh_public));
    shared.was_contributory()
        && bool::from(dh_mac(shared.as_bytes(), context, message).ct_eq(proof))
}

/// The public X25519 key of an ephemeral `secret` (for [`verify_dh_proof`]'s verifier).
pub fn dh_public_of(secret: &[u8; 32]) -> [u8; 32] {
    DhPublic::from(&StaticSecret::from(*secret)).to_bytes()
}

fn domain(context: &[u8], message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(context.len() + 1 + message.len());
    v.extend_from_slice(context);
    v.push(0);
    v.extend_from_slice(message);
    v
}

/// Verify a device signature made with [`DeviceIdentity::sign`].
pub fn verify_signature(
    public: &[u8; 32],
    context: &[u8],
    message: &[u8],
    signature: &[u8; 64],
) -> bool {
    VerifyingKey::from_bytes(public)
        .and_then(|k| k.verify_strict(&domain(context, message), &Signature::from_bytes(signature)))
        .is_ok()
}

/// A short identifier of an authority key: the first 8 bytes of BLAKE2s of the public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthorityKeyId(pub [u8; 8]);

impl AuthorityKeyId {
    /// The id of an authority public key.
    pub fn of(public: &[u8; 32]) -> Self {
        let mut h = Blake2s256::new();
        h.update(b"natter-authority-id");
        h.update(public);
        let mut id = [0u8; 8];
        id.copy_from_slice(&h.finalize()[..8]);
        Self(id)
    }
}

/// The login authority's signing key. Lives on the login server only.
pub struct Authority {
    key: SigningKey,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Generate a new authority key.
    pub fn generate(rng: &mut Rng) -> Self {
        Self::from_secret_bytes(rng.bytes32())
    }

    /// Restore from the 32-byte secret.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The secret, for storage with owner-only permissions.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key that clients and super nodes trust.
    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// This key's short id.
    pub fn key_id(&self) -> AuthorityKeyId {
        AuthorityKeyId::of(&self.public())
    }

    /// Sign `message` under a domain-separation `context` (revocation lists and other
    /// authority statements; verify with [`verify_signature`] and the authority's public key).
    pub fn sign(&self, context: &[u8], message: &[u8]) -> [u8; 64] {
        self.key.sign(&domain(context, message)).to_bytes()
    }

    /// The device's ring salt: a keyed hash of its X25519 key under a key derived from this
    /// authority's secret. Nobody else can compute it, so a super node's position in the index
    /// ring ([`Certificate::ring_salt`]) is known only once the key is certified, and the same
    /// key keeps its position across renewals.
    pub fn ring_salt(&self, dh_public: &[u8; 32]) -> [u8; RING_SALT_LEN] {
        let mut k = Blake2s256::new();
        k.update(b"natter-ring-salt-key-v1");
        k.update(self.key.to_bytes());
        let key = k.finalize();
        let mut h = Blake2s256::new();
        h.update(b"natter-ring-salt-v1");
        h.update(key);
        h.update(dh_public);
        let mut salt = [0u8; RING_SALT_LEN];
        salt.copy_from_slice(&h.finalize()[..RING_SALT_LEN]);
        salt
    }

    /// Certify a device's keys for `user` from `not_before` to `not_after`.
    pub fn certify(
        &self,
        user: &UserName,
        dh_public: [u8; 32],
        signing_public: [u8; 32],
        not_before: UnixTime,
        not_after: UnixTime,
    ) -> Certificate {
        let mut cert = Certificate {
            authority: self.key_id(),
            user: user.clone(),
            device: DeviceId::from_signing_key(&signing_public),
            signing_public,
            dh_public,
            ring_salt: self.ring_salt(&dh_public),
            not_before,
            not_after,
            signature: [0; 64],
        };
        cert.signature = self.key.sign(&cert.signed_bytes()).to_bytes();
        cert
    }
}

/// The authority public keys a node trusts (several at once during key rotation).
///
/// A key may carry a validity window ([`TrustedAuthorities::add_with_window`]): outside it,
/// nothing it signed verifies, and certificates it signed must lie inside it. A retired or
/// leaked key is given an end, a key planned for a rotation a start.
#[derive(Debug, Clone, Default)]
pub struct TrustedAuthorities {
    keys: Vec<(AuthorityKeyId, [u8; 32], Option<Window>)>,
}

/// When an authority key may be used: from, until (inclusive).
type Window = (UnixTime, UnixTime);

impl TrustedAuthorities {
    /// Trust these public keys.
    pub fn new(keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
        let mut t = Self::default();
        for k in keys {
            t.add(k);
        }
        t
    }

    /// Trust one more key.
    pub fn add(&mut self, public: [u8; 32]) {
        self.insert(public, None);
    }

    /// Trust one more key from `not_before` to `not_after` only (a key added twice keeps its
    /// last window).
    pub fn add_with_window(&mut self, public: [u8; 32], not_before: UnixTime, not_after: UnixTime) {
        self.insert(public, Some((not_before, not_after)));
    }

    fn insert(&mut self, public: [u8; 32], window: Option<Window>) {
        let id = AuthorityKeyId::of(&public);
        match self.keys.iter_mut().find(|(i, _, _)| *i == id) {
            Some(entry) => {
                if window.is_some() {
                    entry.2 = window;
                }
            }
            None => self.keys.push((id, public, window)),
        }
    }

    /// The trusted public keys.
    pub fn keys(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.keys.iter().map(|(_, k, _)| k)
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The validity window of the trusted key with this id (from, until), if it has one.
    pub fn window(&self, id: AuthorityKeyId) -> Option<(UnixTime, UnixTime)> {
        self.get(id).and_then(|(_, w)| w)
    }

    /// The key with this id, and its window if it has one.
    fn get(&self, id: AuthorityKeyId) -> Option<([u8; 32], Option<Window>)> {
        self.keys
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, k, w)| (*k, *w))
    }
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The bytes are not a certificate.
    #[error("malformed certificate: {0}")]
    Malformed(#[from] DecodeError),
    /// Signed by a key this node does not trust.
    #[error("certificate from an unknown authority")]
    UnknownAuthority,
    /// The signature does not verify (tampered, or forged with another key).
    #[error("certificate signature is invalid")]
    BadSignature,
    /// Past `not_after`.
    #[error("certificate expired")]
    Expired,
    /// Before `not_before`.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// The device id does not belong to the signing key it names.
    #[error("certificate device id does not match its key")]
    DeviceIdMismatch,
    /// The certificate is valid but binds a different static key than the one presented.
    #[error("certificate does not bind the key the peer authenticated with")]
    WrongKey,
    /// The login authority revoked this device.
    #[error("the device was revoked")]
    Revoked,
    /// The authority key that signed it is trusted only for a window that excludes now or
    /// the certificate's validity (a retired or not yet active key).
    #[error("certificate from an authority key outside its validity window")]
    AuthorityOutOfWindow,
}

/// A user certificate: the login authority's statement that a device belongs to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Which authority key signed it.
    pub authority: AuthorityKeyId,
    /// The user.
    pub user: UserName,
    /// The device.
    pub device: DeviceId,
    /// The device's Ed25519 public key.
    pub signing_public: [u8; 32],
    /// The device's X25519 public key (its Noise static key).
    pub dh_public: [u8; 32],
    /// Where the device sits in the index ring when it serves as a super node (with
    /// `dh_public`): chosen by the authority ([`Authority::ring_salt`]), so a key cannot be
    /// ground offline to land next to a user's records.
    pub ring_salt: [u8; RING_SALT_LEN],
    /// Valid from (inclusive).
    pub not_before: UnixTime,
    /// Valid until (inclusive).
    pub not_after: UnixTime,
    /// Ed25519 signature by the authority over everything above.
    pub signature: [u8; 64],
}

const CERT_VERSION: u8 = 2;
const CERT_CONTEXT: &[u8] = b"natter-certificate-v2";
/// Bytes of a [`Certificate::ring_salt`].
pub const RING_SALT_LEN: usize = 16;
/// The largest encoded certificate.
pub const MAX_CERT_LEN: usize =
    1 + 8 + 1 + UserName::MAX_LEN + 16 + 32 + 32 + RING_SALT_LEN + 8 + 8 + 64;

impl Certificate {
    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(CERT_VERSION);
        out.put_slice(&self.authority.0);
        out.put_u8(self.user.as_str().len() as u8);
        out.put_slice(self.user.as_str().as_bytes());
        out.put_slice(&self.device.0);
        out.put_slice(&self.signing_public);
        out.put_slice(&self.dh_public);
        out.put_slice(&self.ring_salt);
        out.put_u64(self.not_before.0);
        out.put_u64(self.not_after.0);
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut body = BytesMut::with_capacity(MAX_CERT_LEN);
        self.encode_body(&mut body);
        domain(CERT_CONTEXT, &body)
    }

    /// Append the encoded certificate.
    pub fn encode(&self, out: &mut BytesMut) {
        self.encode_body(out);
        out.put_slice(&self.signature);
    }

    /// The encoded certificate as a vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(MAX_CERT_LEN);
        self.encode(&mut b);
        b.to_vec()
    }

    /// Decode (without verifying: call [`Certificate::verify`]).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let cert = Self::read(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    /// Decode from a reader, leaving what follows.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.u8()? != CERT_VERSION {
            return Err(DecodeError::Invalid("certificate version"));
        }
        let authority = AuthorityKeyId(r.array()?);
        let name = r.bytes_u8("user name", UserName::MAX_LEN)?;
        let name = std::str::from_utf8(name).map_err(|_| DecodeError::Invalid("user name"))?;
        let user = UserName::parse(name).map_err(|_| DecodeError::Invalid("user name"))?;
        if user.as_str() != name {
            return Err(DecodeError::Invalid("user name not canonical"));
        }
        Ok(Self {
            authority,
            user,
            device: DeviceId(r.array()?),
            signing_public: r.array()?,
            dh_public: r.array()?,
            ring_salt: r.array()?,
            not_before: UnixTime(r.u64()?),
            not_after: UnixTime(r.u64()?),
            signature: r.array()?,
        })
    }

    /// Check the signature against the trusted authorities and the validity window at `now`.
    pub fn verify(&self, trusted: &TrustedAuthorities, now: UnixTime) -> Result<(), CertError> {
        let (key, window) = trusted
            .get(self.authority)
            .ok_or(CertError::UnknownAuthority)?;
        if let Some((from, until)) = window {
            // Used only inside its window, for certificates inside it.
            if now < from || now > until || self.not_before < from || self.not_after > until {
                return Err(CertError::AuthorityOutOfWindow);
            }
        }
        let key = VerifyingKey::from_bytes(&key).map_err(|_| CertError::UnknownAuthority)?;
        key.verify_strict(
            &self.signed_bytes(),
            &Signature::from_bytes(&self.signature),
        )
        .map_err(|_| CertError::BadSignature)?;
        if DeviceId::from_signing_key(&self.signing_public) != self.device {
            return Err(CertError::DeviceIdMismatch);
        }
        if now < self.not_before {
            return Err(CertError::NotYetValid);
        }
        if now > self.not_after {
            return Err(CertError::Expired);
        }
        Ok(())
    }

    /// [`Certificate::verify`], and check that it binds `dh_public`.
    pub fn verify_for_key(
        &self,
        trusted: &TrustedAuthorities,
        now: UnixTime,
        dh_public: &[u8; 32],
    ) -> Result<(), CertError> {
        self.verify(trusted, now)?;
        if &self.dh_public != dh_public {
            return Err(CertError::WrongKey);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use proptest::prelude::{any, proptest};

    fn setup() -> (Authority, DeviceIdentity, Certificate, TrustedAuthorities) {
        let mut rng = Rng::from_seed(7);
        let auth = Authority::generate(&mut rng);
        let dev = DeviceIdentity::generate(&mut rng);
        let cert = auth.certify(
            &UserName::parse("Alice").unwrap(),
            dev.dh_public(),
            dev.signing_public(),
            UnixTime(1000),
            UnixTime(2000),
        );
        let trusted = TrustedAuthorities::new([auth.public()]);
        (auth, dev, cert, trusted)
    }

    #[test]
    fn valid_certificate_verifies_and_roundtrips() {
        let (_, dev, cert, trusted) = setup();
        assert_eq!(cert.user.as_str(), "alice");
        assert_eq!(cert.device, dev.device_id());
        cert.verify_for_key(&trusted, UnixTime(1500), &dev.dh_public())
            .unwrap();
        let bytes = cert.to_bytes();
        assert!(bytes.len() <= MAX_CERT_LEN);
        assert_eq!(Certificate::decode(&bytes).unwrap(), cert);
    }

    #[test]
    fn ring_salt_is_the_authoritys_choice_and_stays_with_the_key() {
        let (auth, dev, cert, trusted) = setup();
        // A renewal keeps the position; another key or another authority moves it.
        let renewed = auth.certify(
            &cert.user,
            dev.dh_public(),
            dev.signing_public(),
            UnixTime(2000),
            UnixTime(3000),
        );
        assert_eq!(renewed.ring_salt, cert.ring_salt);
        let mut rng = Rng::from_seed(9);
        let other_dev = DeviceIdentity::generate(&mut rng);
        assert_ne!(auth.ring_salt(&other_dev.dh_public()), cert.ring_salt);
        let other_auth = Authority::generate(&mut rng);
        assert_ne!(other_auth.ring_salt(&dev.dh_public()), cert.ring_salt);
        // The salt is signed: changing it breaks the certificate.
        let mut moved = cert.clone();
        moved.ring_salt[0] ^= 1;
        assert_eq!(
            moved.verify(&trusted, UnixTime(1500)),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn validity_window_is_enforced() {
        let (_, _, cert, trusted) = setup();
        assert_eq!(
            cert.verify(&trusted, UnixTime(999)),
            Err(CertError::NotYetValid)
        );
        assert_eq!(
            cert.verify(&trusted, UnixTime(2001)),
            Err(CertError::Expired)
        );
        assert!(cert.verify(&trusted, UnixTime(1000)).is_ok());
        assert!(cert.verify(&trusted, UnixTime(2000)).is_ok());
    }

    #[test]
    fn wrong_authority_is_refused() {
        let (_, _, cert, _) = setup();
        let mut rng = Rng::from_seed(8);
        let other = Authority::generate(&mut rng);
        let trusted = TrustedAuthorities::new([other.public()]);
        assert_eq!(
            cert.verify(&trusted, UnixTime(1500)),
            Err(CertError::UnknownAuthority)
        );
        // A certificate that claims a trusted authority's id but was signed by another key.
        let (auth, dev, _, trusted) = setup();
        let mut forged = other.certify(
            &UserName::parse("alice").unwrap(),
            dev.dh_public(),
            dev.signing_public(),
            UnixTime(0),
            UnixTime(u64::MAX),
        );
        forged.authority = auth.key_id();
        assert_eq!(
            forged.verify(&trusted, UnixTime(1500)),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn rotation_trusts_several_authorities() {
        let (_, _, cert, mut trusted) = setup();
        let mut rng = Rng::from_seed(9);
        let next = Authority::generate(&mut rng);
        trusted.add(next.public());
        assert!(cert.verify(&trusted, UnixTime(1500)).is_ok());
        let dev = DeviceIdentity::generate(&mut rng);
        let c2 = next.certify(
            &UserName::parse("bob").unwrap(),
            dev.dh_public(),
            dev.signing_public(),
            UnixTime(0),
            UnixTime(5000),
        );
        assert!(c2.verify(&trusted, UnixTime(1500)).is_ok());
    }

    #[test]
    fn an_authority_key_is_trusted_only_inside_its_window() {
        let (auth, _, cert, _) = setup();
        let mut trusted = TrustedAuthorities::default();
        // Retired at 1800: its certificates verify until then, none after, and one that
        // claims validity past the retirement never does.
        trusted.add_with_window(auth.public(), UnixTime(0), UnixTime(1800));
        assert_eq!(
            cert.verify(&trusted, UnixTime(1500)),
            Err(CertError::AuthorityOutOfWindow),
            "valid until 2000, past the key's end"
        );
        trusted.add_with_window(auth.public(), UnixTime(0), UnixTime(2500));
        assert!(cert.verify(&trusted, UnixTime(1500)).is_ok());
        trusted.add_with_window(auth.public(), UnixTime(1200), UnixTime(2500));
        assert_eq!(
            cert.verify(&trusted, UnixTime(1500)),
            Err(CertError::AuthorityOutOfWindow),
            "issued before the key's start"
        );
        trusted.add_with_window(auth.public(), UnixTime(500), UnixTime(2500));
        assert!(cert.verify(&trusted, UnixTime(1999)).is_ok());
        // Without a window (plain `add` keeps the last one), anything in the certificate's own.
        trusted.add(auth.public());
        assert!(cert.verify(&trusted, UnixTime(1999)).is_ok());
        let plain = TrustedAuthorities::new([auth.public()]);
        assert!(cert.verify(&plain, UnixTime(1999)).is_ok());
    }

    #[test]
    fn wrong_key_is_refused() {
        let (_, _, cert, trusted) = setup();
        let mut rng = Rng::from_seed(10);
        let mallory = DeviceIdentity::generate(&mut rng);
        assert_eq!(
            cert.verify_for_key(&trusted, UnixTime(1500), &mallory.dh_public()),
            Err(CertError::WrongKey)
        );
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let (_, _, cert, trusted) = setup();
        let bytes = cert.to_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let ok = Certificate::decode(&b)
                .map(|c| c.verify(&trusted, UnixTime(1500)).is_ok())
                .unwrap_or(false);
            assert!(!ok, "bit {bit} flipped still verifies");
        }
    }

    #[test]
    fn user_name_rules() {
        assert!(UserName::parse("ab").is_err());
        assert!(UserName::parse("1abc").is_err());
        assert!(UserName::parse("al ice").is_err());
        assert!(UserName::parse("älice").is_err());
        assert!(UserName::parse(&"a".repeat(33)).is_err());
        assert_eq!(
            UserName::parse("Bob.Smith_2-x").unwrap().as_str(),
            "bob.smith_2-x"
        );
    }

    #[test]
    fn device_signatures() {
        let (_, dev, _, _) = setup();
        let sig = dev.sign(b"ctx", b"hello");
        assert!(verify_signature(
            &dev.signing_public(),
            b"ctx",
            b"hello",
            &sig
        ));
        assert!(!verify_signature(
            &dev.signing_public(),
            b"ctx2",
            b"hello",
            &sig
        ));
        assert!(!verify_signature(
            &dev.signing_public(),
            b"ctx",
            b"hellO",
            &sig
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Certificate::decode(&data);
        }
    }
}
