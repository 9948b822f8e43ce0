//! A device's credentials as one byte string: its secret keys and, once logged in, its
//! certificate. This is what an application keeps in the platform's keychain instead of a
//! data directory, and hands back at the next start.
//!
//! Layout (version 1): `"NTDC"`, version `1`, the X25519 secret (32 bytes), the Ed25519
//! secret (32 bytes), then `0` (no certificate) or `1` and the certificate with a 16-bit
//! big-endian length. The certificate must be for these keys.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::identity::{Certificate, DeviceIdentity, MAX_CERT_LEN};
use crate::wire::{DecodeError, Reader};

const MAGIC: [u8; 4] = *b"NTDC";
const VERSION: u8 = 1;
/// The longest encoded credentials.
pub const MAX_CREDENTIALS_LEN: usize = 4 + 1 + 64 + 1 + 2 + MAX_CERT_LEN;

/// A device's keys and its latest certificate, exportable to bytes and back.
#[derive(Clone)]
pub struct DeviceCredentials {
    /// The device's secret keys.
    pub identity: DeviceIdentity,
    /// Its latest certificate, if it has logged in.
    pub certificate: Option<Certificate>,
}

impl fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("device", &self.identity.device_id())
            .field("user", &self.certificate.as_ref().map(|c| &c.user))
            .finish_non_exhaustive()
    }
}

/// Why bytes are not a device's credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// Not credentials at all (wrong magic bytes).
    #[error("not Natter device credentials")]
    NotCredentials,
    /// Written by a newer version of Natter.
    #[error("device credentials of unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Truncated or otherwise malformed.
    #[error("malformed device credentials: {0}")]
    Malformed(#[from] DecodeError),
    /// The certificate is for other keys.
    #[error("the certificate in the credentials is for another device")]
    CertificateMismatch,
}

impl DeviceCredentials {
    /// The credentials as bytes (secret: store them as a password is stored).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (dh, sign) = self.identity.secret_bytes();
        let mut b = BytesMut::with_capacity(MAX_CREDENTIALS_LEN);
        b.put_slice(&MAGIC);
        b.put_u8(VERSION);
        b.put_slice(&dh);
        b.put_slice(&sign);
        match &self.certificate {
            None => b.put_u8(0),
            Some(c) => {
                let cert = c.to_bytes();
                b.put_u8(1);
                // A certificate is at most MAX_CERT_LEN (< 64 KiB) long.
                b.put_u16(cert.len() as u16);
                b.put_slice(&cert);
            }
        }
        b.to_vec()
    }

    /// Read credentials written by [`DeviceCredentials::to_bytes`].
    ///
    /// # Errors
    /// See [`CredentialsError`].
    pub fn decode(buf: &[u8]) -> Result<Self, CredentialsError> {
        let mut r = Reader::new(buf);
        if r.array::<4>()? != MAGIC {
            return Err(CredentialsError::NotCredentials);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(CredentialsError::UnsupportedVersion(version));
        }
        let dh = r.array::<32>()?;
        let sign = r.array::<32>()?;
        let identity = DeviceIdentity::from_secret_bytes(dh, sign);
        let certificate = match r.u8()? {
            0 => None,
            1 => Some(Certificate::decode(
                r.bytes_u16("certificate", MAX_CERT_LEN)?,
            )?),
            _ => {
                return Err(CredentialsError::Malformed(DecodeError::Invalid(
                    "certificate flag",
                )))
            }
        };
        r.finish()?;
        if let Some(c) = &certificate {
            if c.dh_public != identity.dh_public() || c.device != identity.device_id() {
                return Err(CredentialsError::CertificateMismatch);
            }
        }
        Ok(Self {
            identity,
            certificate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testkit::TestNetwork;
    use proptest::prelude::*;

    fn sample(with_cert: bool) -> DeviceCredentials {
        let local = TestNetwork::new(1).identity("alice");
        DeviceCredentials {
            identity: local.device,
            certificate: with_cert.then_some(local.certificate),
        }
    }

    #[test]
    fn round_trips_with_and_without_a_certificate() {
        for with in [false, true] {
            let c = sample(with);
            let back = DeviceCredentials::decode(&c.to_bytes()).unwrap();
            assert_eq!(back.to_bytes(), c.to_bytes());
            assert_eq!(back.identity.device_id(), c.identity.device_id());
            assert_eq!(back.certificate.is_some(), with);
        }
    }

    #[test]
    fn rejects_other_bytes_with_a_reason() {
        let good = sample(true).to_bytes();
        assert_eq!(
            DeviceCredentials::decode(b"hello world").err(),
            Some(CredentialsError::NotCredentials)
        );
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(
            DeviceCredentials::decode(&v2).err(),
            Some(CredentialsError::UnsupportedVersion(2))
        );
        for cut in 0..good.len() {
            assert!(
                DeviceCredentials::decode(&good[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            DeviceCredentials::decode(&long),
            Err(CredentialsError::Malformed(DecodeError::TrailingBytes(1)))
        ));
        // Another device's certificate with these keys.
        let mut mixed = sample(true);
        let other = DeviceIdentity::generate(&mut Rng::from_seed(8));
        mixed.identity = other;
        assert_eq!(
            DeviceCredentials::decode(&mixed.to_bytes()).err(),
            Some(CredentialsError::CertificateMismatch)
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_accepts_only_canonical_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(c) = DeviceCredentials::decode(&data) {
                prop_assert_eq!(c.to_bytes(), data);
            }
        }

        #[test]
        fn survives_any_single_byte_change(pos in 0usize..300, byte in any::<u8>()) {
            let good = sample(true).to_bytes();
            let mut bad = good.clone();
            let pos = pos % bad.len();
            bad[pos] = byte;
            // Either rejected, or (a secret-key byte changed) read back as exactly what it is.
            if let Ok(c) = DeviceCredentials::decode(&bad) {
                prop_assert_eq!(c.to_bytes(), bad);
            }
        }
    }
}
