//! Presence records: what the global index stores about a user's device.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::chat::keys::{DeviceKeys, PublishedKeys};
use crate::crypto::Capabilities;
use crate::crypto::{
    verify_signature, CertError, Certificate, DeviceId, DeviceIdentity, TrustedAuthorities,
    UnixTime, UserName,
};
use crate::wire::message::{put_addr, read_addr};
use crate::wire::{DecodeError, Reader};

/// How long a record stays findable after it was signed (the user's last login): 72 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(72 * 3600);
/// Most super nodes and most local addresses in a record.
pub const MAX_ADDRESSES: usize = 4;
/// Clock skew tolerated for timestamps in the future.
pub const MAX_SKEW_SECS: u64 = 300;
const CONTEXT: &[u8] = b"natter-presence-v1";
/// Records without chat keys (as every build before chat wrote them).
const VERSION: u8 = 1;
/// Records with chat keys.
const VERSION_CHAT: u8 = 2;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The bytes are not a record.
    #[error("malformed presence record: {0}")]
    Malformed(#[from] DecodeError),
    /// The certificate does not verify (at the record's timestamp).
    #[error("presence certificate: {0}")]
    Certificate(CertError),
    /// The signature is not the certified device's.
    #[error("presence signature is invalid")]
    BadSignature,
    /// The device is revoked.
    #[error("the device is revoked")]
    Revoked,
    /// Older than the retention period.
    #[error("presence record expired")]
    Expired,
    /// Signed in the future.
    #[error("presence record is from the future")]
    FromTheFuture,
}

/// A signed statement of where a device is (or was last seen).
///
/// A record is signed by the device's own Ed25519 key and carries the device's certificate
/// from the login authority, so anyone (a super node storing it, a searcher reading it) can
/// check it without trusting whoever handed it over:
///
/// * the certificate verifies against the trusted authorities **as of the record's timestamp**
///   (a record stays findable for the retention period, 72 hours, after the user's last login,
///   longer than a certificate lives);
/// * the signature is the certified device's, over everything else in the record;
/// * the device is not revoked;
/// * the record is not older than the retention period nor from the future (5 minutes of clock
///   skew allowed);
/// * between two records of one device, the higher sequence number wins
///   ([`PresenceRecord::supersedes`]), so a replayed or stale record never replaces a fresh one.
///
/// A user with several devices has one record per device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    /// The device's certificate (user name, device id, keys).
    pub certificate: Certificate,
    /// Online now (false: logged out, kept as "last seen").
    pub online: bool,
    /// The super nodes the device is attached to.
    pub super_nodes: Vec<SocketAddr>,
    /// Its address as seen from the Internet.
    pub reflexive: Option<SocketAddr>,
    /// Its own addresses (same-LAN calls).
    pub local_addresses: Vec<SocketAddr>,
    /// Its NAT type code (see `natter_core::overlay`; 0 when unknown).
    pub nat: u8,
    /// What it can do.
    pub capabilities: Capabilities,
    /// The device's chat keys (so a message can be sealed for it while it is offline).
    pub chat: Option<PublishedKeys>,
    /// Strictly increasing per device.
    pub sequence: u64,
    /// When it was signed.
    pub timestamp: UnixTime,
    /// Ed25519 signature by the certified device key over everything above.
    pub signature: [u8; 64],
}

fn put_addrs(out: &mut BytesMut, addrs: &[SocketAddr]) {
    let n = addrs.len().min(MAX_ADDRESSES);
    out.put_u8(n as u8);
    for a in &addrs[..n] {
        put_addr(out, a);
    }
}

fn read_addrs(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, DecodeError> {
    let n = usize::from(r.u8()?);
    if n > MAX_ADDRESSES {
        return Err(DecodeError::TooLong {
            what: "addresses",
            len: n,
            max: MAX_ADDRESSES,
        });
    }
    (0..n).map(|_| read_addr(r)).collect()
}

impl PresenceRecord {
    /// Sign a record for `device`, whose certificate is `certificate`.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        device: &DeviceIdentity,
        certificate: Certificate,
        online: bool,
        super_nodes: Vec<SocketAddr>,
        reflexive: Option<SocketAddr>,
        local_addresses: Vec<SocketAddr>,
        nat: u8,
        capabilities: Capabilities,
        sequence: u64,
        timestamp: UnixTime,
    ) -> Self {
        let mut r = Self {
            certificate,
            online,
            super_nodes: super_nodes.into_iter().take(MAX_ADDRESSES).collect(),
            reflexive,
            local_addresses: local_addresses.into_iter().take(MAX_ADDRESSES).collect(),
            nat,
            capabilities,
            chat: None,
            sequence,
            timestamp,
            signature: [0; 64],
        };
        r.signature = device.sign(CONTEXT, &r.body());
        r
    }

    /// The same record carrying the device's chat keys, signed again.
    pub fn with_chat_keys(mut self, device: &DeviceIdentity, keys: PublishedKeys) -> Self {
        self.chat = Some(keys);
        self.signature = device.sign(CONTEXT, &self.body());
        self
    }

    /// The device's chat keys, with the record's certificate (checked by the record's
    /// signature only: check them with [`DeviceKeys::verify`] before sealing for them).
    pub fn device_keys(&self) -> Option<DeviceKeys> {
        self.chat
            .map(|k| DeviceKeys::from_published(self.certificate.clone(), k))
    }

    /// The user.
    pub fn user(&self) -> &UserName {
        &self.certificate.user
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.certificate.device
    }

    fn put_body(&self, out: &mut BytesMut) {
        out.put_u8(if self.chat.is_some() {
            VERSION_CHAT
        } else {
            VERSION
        });
        self.certificate.encode(out);
        out.put_u8(u8::from(self.online));
        put_addrs(out, &self.super_nodes);
        match &self.reflexive {
            Some(a) => {
                out.put_u8(1);
                put_addr(out, a);
            }
            None => out.put_u8(0),
        }
        put_addrs(out, &self.local_addresses);
        out.put_u8(self.nat);
        out.put_u32(self.capabilities.0);
        if let Some(keys) = &self.chat {
            keys.encode(out);
        }
        out.put_u64(self.sequence);
        out.put_u64(self.timestamp.0);
    }

    fn body(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(512);
        self.put_body(&mut b);
        b.to_vec()
    }

    /// Append the encoded record.
    pub fn encode(&self, out: &mut BytesMut) {
        self.put_body(out);
        out.put_slice(&self.signature);
    }

    /// The encoded record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(512);
        self.encode(&mut b);
        b.to_vec()
    }

    /// Decode from a reader (without verifying: call [`PresenceRecord::verify`]).
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8()?;
        if version != VERSION && version != VERSION_CHAT {
            return Err(DecodeError::Invalid("presence version"));
        }
        let certificate = Certificate::read(r)?;
        let online = r.bool("online flag")?;
        let super_nodes = read_addrs(r)?;
        let reflexive = match r.u8()? {
            0 => None,
            1 => Some(read_addr(r)?),
            _ => return Err(DecodeError::Invalid("reflexive flag")),
        };
        Ok(Self {
            certificate,
            online,
            super_nodes,
            reflexive,
            local_addresses: read_addrs(r)?,
            nat: r.u8()?,
            capabilities: Capabilities(r.u32()?),
            chat: if version == VERSION_CHAT {
                Some(PublishedKeys::read(r)?)
            } else {
                None
            },
            sequence: r.u64()?,
            timestamp: UnixTime(r.u64()?),
            signature: r.array()?,
        })
    }

    /// Decode a whole buffer.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let rec = Self::read(&mut r)?;
        r.finish()?;
        Ok(rec)
    }

    /// Check everything listed in [`PresenceRecord`]'s documentation at wall-clock `now`.
    pub fn verify(
        &self,
        trusted: &TrustedAuthorities,
        now: UnixTime,
        retention: Duration,
        is_revoked: impl Fn(DeviceId) -> bool,
    ) -> Result<(), PresenceError> {
        if self.timestamp.0 > now.0.saturating_add(MAX_SKEW_SECS) {
            return Err(PresenceError::FromTheFuture);
        }
        if now.0.saturating_sub(self.timestamp.0) > retention.as_secs() {
            return Err(PresenceError::Expired);
        }
        self.certificate
            .verify(trusted, self.timestamp)
            .map_err(PresenceError::Certificate)?;
        if !verify_signature(
            &self.certificate.signing_public,
            CONTEXT,
            &self.body(),
            &self.signature,
        ) {
            return Err(PresenceError::BadSignature);
        }
        if is_revoked(self.certificate.device) {
            return Err(PresenceError::Revoked);
        }
        Ok(())
    }

    /// True when `self` replaces `other`: the same device, a higher sequence number.
    pub fn supersedes(&self, other: &PresenceRecord) -> bool {
        self.certificate.device == other.certificate.device && self.sequence > other.sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{TestNetwork, TEST_WALL};
    use proptest::prelude::{any, proptest};

    fn record(net: &TestNetwork, user: &str, sequence: u64, at: UnixTime) -> PresenceRecord {
        let id = net.identity(user);
        PresenceRecord::sign(
            &id.device,
            id.certificate,
            true,
            vec![
                "198.18.0.10:4000".parse().unwrap(),
                "198.18.0.11:4000".parse().unwrap(),
            ],
            Some("198.18.50.1:38000".parse().unwrap()),
            vec!["10.0.0.2:5000".parse().unwrap()],
            3,
            Capabilities::VOICE,
            sequence,
            at,
        )
    }

    fn ok(r: &PresenceRecord, net: &TestNetwork, now: UnixTime) -> Result<(), PresenceError> {
        r.verify(&net.trusted(), now, DEFAULT_RETENTION, |_| false)
    }

    #[test]
    fn signs_verifies_roundtrips_and_orders() {
        let net = TestNetwork::new(1);
        let r = record(&net, "alice", 5, TEST_WALL);
        ok(&r, &net, TEST_WALL).unwrap();
        let decoded = PresenceRecord::decode(&r.to_bytes()).unwrap();
        assert_eq!(decoded, r);
        let newer = record(&net, "alice", 6, TEST_WALL);
        assert!(newer.supersedes(&r));
        assert!(!r.supersedes(&newer));
        assert!(!r.supersedes(&r), "a replay does not supersede");
        assert!(
            !record(&net, "bob", 9, TEST_WALL).supersedes(&r),
            "another device"
        );
    }

    #[test]
    fn records_carry_chat_keys_bound_by_both_signatures() {
        let net = TestNetwork::new(1);
        let id = net.identity("alice");
        let channels = crate::chat::Channels::new(
            &id.device,
            id.certificate.clone(),
            TEST_WALL,
            &mut crate::rng::Rng::from_seed(3),
        );
        let plain = record(&net, "alice", 5, TEST_WALL);
        assert_eq!(plain.to_bytes()[0], VERSION, "no keys: the old encoding");
        let r = plain.with_chat_keys(&id.device, channels.keys().published());
        assert_eq!(r.to_bytes()[0], VERSION_CHAT);
        ok(&r, &net, TEST_WALL).unwrap();
        let decoded = PresenceRecord::decode(&r.to_bytes()).unwrap();
        assert_eq!(decoded, r);
        let keys = decoded.device_keys().unwrap();
        assert_eq!(&keys, channels.keys());
        keys.verify(&net.trusted(), TEST_WALL).unwrap();
        // Keys swapped in the record: the record's signature fails.
        let mut swapped = r.clone();
        swapped.chat.as_mut().unwrap().prekey[0] ^= 1;
        assert_eq!(
            ok(&swapped, &net, TEST_WALL),
            Err(PresenceError::BadSignature)
        );
        // Keys re-signed into a record by the device but not signed as keys: refused as keys.
        let mut unsigned = channels.keys().published();
        unsigned.prekey[0] ^= 1;
        let r2 = record(&net, "alice", 6, TEST_WALL).with_chat_keys(&id.device, unsigned);
        ok(&r2, &net, TEST_WALL).unwrap();
        assert!(r2
            .device_keys()
            .unwrap()
            .verify(&net.trusted(), TEST_WALL)
            .is_err());
    }

    #[test]
    fn retention_future_revocation_and_forgery() {
        let net = TestNetwork::new(1);
        let r = record(&net, "alice", 1, TEST_WALL);
        // Findable for 72 hours after signing, although the certificate lives one day.
        ok(&r, &net, UnixTime(TEST_WALL.0 + 72 * 3600)).unwrap();
        assert_eq!(
            ok(&r, &net, UnixTime(TEST_WALL.0 + 72 * 3600 + 1)),
            Err(PresenceError::Expired)
        );
        assert_eq!(
            ok(&r, &net, UnixTime(TEST_WALL.0 - 3600)),
            Err(PresenceError::FromTheFuture)
        );
        assert_eq!(
            r.verify(&net.trusted(), TEST_WALL, DEFAULT_RETENTION, |d| d
                == r.device()),
            Err(PresenceError::Revoked)
        );
        // Mallory signs a record with her own key and Alice's certificate.
        let mallory = net.identity("mallory");
        let mut forged = record(&net, "alice", 2, TEST_WALL);
        forged.signature = mallory.device.sign(CONTEXT, &forged.body());
        assert_eq!(
            ok(&forged, &net, TEST_WALL),
            Err(PresenceError::BadSignature)
        );
        // A record from another network's authority.
        let other = TestNetwork::new(2);
        let foreign = record(&other, "alice", 1, TEST_WALL);
        assert!(matches!(
            ok(&foreign, &net, TEST_WALL),
            Err(PresenceError::Certificate(_))
        ));
        // A certificate that was not valid yet when the record was signed.
        let early = record(&net, "alice", 1, UnixTime(TEST_WALL.0 - 2 * 86_400));
        assert!(matches!(
            ok(&early, &net, UnixTime(TEST_WALL.0 - 2 * 86_400)),
            Err(PresenceError::Certificate(CertError::NotYetValid))
        ));
    }

    #[test]
    fn every_bit_flip_of_record_and_certificate_is_rejected() {
        let net = TestNetwork::new(1);
        let bytes = record(&net, "alice", 7, TEST_WALL).to_bytes();
        let mut accepted = 0;
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            if let Ok(r) = PresenceRecord::decode(&b) {
                if ok(&r, &net, TEST_WALL).is_ok() {
                    accepted += 1;
                }
            }
        }
        assert_eq!(accepted, 0, "of {} flipped bits", bytes.len() * 8);
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = PresenceRecord::decode(&data);
        }
    }
}
