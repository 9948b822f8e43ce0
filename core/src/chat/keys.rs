//! A device's published chat keys: what a sender needs to open an end-to-end channel to it
//! while it is offline.

use bytes::{BufMut, BytesMut};

use crate::crypto::{
    verify_signature, CertError, Certificate, DeviceId, DeviceIdentity, TrustedAuthorities,
    UnixTime, UserName,
};
use crate::wire::{DecodeError, Reader};

const CONTEXT: &[u8] = b"natter-chat-keys-v1";
const VERSION: u8 = 1;

/// Why a device's chat keys were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// The bytes are not chat keys.
    #[error("malformed chat keys: {0}")]
    Malformed(#[from] DecodeError),
    /// The certificate does not verify at the keys' signing time.
    #[error("chat keys' certificate: {0}")]
    Certificate(CertError),
    /// The signature is not the certified device's.
    #[error("chat keys' signature is invalid")]
    BadSignature,
    /// Signed more than five minutes in the future.
    #[error("chat keys are from the future")]
    FromTheFuture,
}

/// A device's Olm keys, signed by its certified Ed25519 key.
///
/// `identity` is the device's Olm identity key (Curve25519) and `prekey` its long-lived Olm
/// fallback key: with both, anyone can open a channel to the device without it being online
/// (X3DH with the prekey standing in for a one-time key). The signature binds both to the
/// device's certificate, so whoever hands the keys over (a super node, a mailbox, the login
/// server) cannot substitute their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    /// The device's certificate from the login authority.
    pub certificate: Certificate,
    /// The Olm identity key.
    pub identity: [u8; 32],
    /// The Olm fallback key new channels start from.
    pub prekey: [u8; 32],
    /// When the keys were signed.
    pub signed_at: UnixTime,
    /// Ed25519 signature by the certified device key over everything above.
    pub signature: [u8; 64],
}

/// The part of [`DeviceKeys`] a presence record carries (the record has the certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedKeys {
    /// The Olm identity key.
    pub identity: [u8; 32],
    /// The Olm fallback key.
    pub prekey: [u8; 32],
    /// When the keys were signed.
    pub signed_at: UnixTime,
    /// The device's signature over the whole [`DeviceKeys`].
    pub signature: [u8; 64],
}

impl PublishedKeys {
    /// Encoded length.
    pub const LEN: usize = 32 + 32 + 8 + 64;

    /// Append the encoded keys.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.identity);
        out.put_slice(&self.prekey);
        out.put_u64(self.signed_at.0);
        out.put_slice(&self.signature);
    }

    /// Decode from a reader.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            identity: r.array()?,
            prekey: r.array()?,
            signed_at: UnixTime(r.u64()?),
            signature: r.array()?,
        })
    }
}

impl DeviceKeys {
    /// The keys without the certificate, for a presence record.
    pub fn published(&self) -> PublishedKeys {
        PublishedKeys {
            identity: self.identity,
            prekey: self.prekey,
            signed_at: self.signed_at,
            signature: self.signature,
        }
    }

    /// The keys a presence record published, with the record's certificate (check them with
    /// [`DeviceKeys::verify`]).
    pub fn from_published(certificate: Certificate, keys: PublishedKeys) -> Self {
        Self {
            certificate,
            identity: keys.identity,
            prekey: keys.prekey,
            signed_at: keys.signed_at,
            signature: keys.signature,
        }
    }

    /// Sign `identity` and `prekey` for `device`, whose certificate is `certificate`.
    pub fn sign(
        device: &DeviceIdentity,
        certificate: Certificate,
        identity: [u8; 32],
        prekey: [u8; 32],
        signed_at: UnixTime,
    ) -> Self {
        let mut keys = Self {
            certificate,
            identity,
            prekey,
            signed_at,
            signature: [0; 64],
        };
        keys.signature = device.sign(CONTEXT, &keys.body());
        keys
    }

    /// The user the device belongs to.
    pub fn user(&self) -> &UserName {
        &self.certificate.user
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.certificate.device
    }

    fn put_body(&self, out: &mut BytesMut) {
        out.put_u8(VERSION);
        self.certificate.encode(out);
        out.put_slice(&self.identity);
        out.put_slice(&self.prekey);
        out.put_u64(self.signed_at.0);
    }

    fn body(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(320);
        self.put_body(&mut b);
        b.to_vec()
    }

    /// Append the encoded keys.
    pub fn encode(&self, out: &mut BytesMut) {
        self.put_body(out);
        out.put_slice(&self.signature);
    }

    /// Decode from a reader (without verifying: call [`DeviceKeys::verify`]).
    pub fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.u8()? != VERSION {
            return Err(DecodeError::Invalid("chat keys version"));
        }
        Ok(Self {
            certificate: Certificate::read(r)?,
            identity: r.array()?,
            prekey: r.array()?,
            signed_at: UnixTime(r.u64()?),
            signature: r.array()?,
        })
    }

    /// Check the certificate (as of the signing time: keys outlive a day's certificate, as
    /// presence records do) and the signature, at wall-clock `now`.
    pub fn verify(&self, trusted: &TrustedAuthorities, now: UnixTime) -> Result<(), KeysError> {
        if self.signed_at.0 > now.0.saturating_add(crate::overlay::MAX_SKEW_SECS) {
            return Err(KeysError::FromTheFuture);
        }
        self.certificate
            .verify(trusted, self.signed_at)
            .map_err(KeysError::Certificate)?;
        if !verify_signature(
            &self.certificate.signing_public,
            CONTEXT,
            &self.body(),
            &self.signature,
        ) {
            return Err(KeysError::BadSignature);
        }
        Ok(())
    }
}
