//! A device's credentials as bytes, for applications that keep them in the platform's
//! keychain instead of a data directory.

use std::fmt;
use std::time::{Duration, SystemTime};

use natter_core::crypto::{CredentialsError, DeviceCredentials, DeviceId, UserName};

/// The longest [`Credentials::to_bytes`] of this version.
pub const MAX_CREDENTIALS_LEN: usize = natter_core::crypto::MAX_CREDENTIALS_LEN;

/// A device's credentials: its secret keys and, once it has logged in, its latest
/// certificate. Export them with [`Client::credentials`](crate::Client::credentials), store
/// [`Credentials::to_bytes`] where the platform keeps secrets, and give them back with
/// [`ClientBuilder::credentials`](crate::ClientBuilder::credentials) at the next start: the
/// device stays the same device of the account, and logs in without the password while its
/// certificate can be renewed.
///
/// The bytes are secret (whoever has them can act as this device until it is revoked). `Debug`
/// shows only the device and the user.
///
/// ```
/// use natter::Credentials;
/// let bytes = [0u8; 8];
/// assert!(Credentials::from_bytes(&bytes).is_err()); // not credentials
/// ```
#[derive(Clone)]
pub struct Credentials(pub(crate) DeviceCredentials);

impl Credentials {
    /// Read credentials from [`Credentials::to_bytes`].
    ///
    /// # Errors
    /// [`CredentialsError`]: not credentials, a newer format, malformed, or a certificate
    /// for other keys.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CredentialsError> {
        DeviceCredentials::decode(bytes).map(Self)
    }

    /// The credentials as bytes (versioned; about 250 bytes with a certificate).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    /// The device these are the keys of.
    pub fn device(&self) -> DeviceId {
        self.0.identity.device_id()
    }

    /// The user the certificate is for, if there is one.
    pub fn user(&self) -> Option<&UserName> {
        self.0.certificate.as_ref().map(|c| &c.user)
    }

    /// When the certificate expires, if there is one.
    pub fn valid_until(&self) -> Option<SystemTime> {
        self.0
            .certificate
            .as_ref()
            .map(|c| SystemTime::UNIX_EPOCH + Duration::from_secs(c.not_after.0))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("device", &self.device())
            .field("user", &self.user())
            .finish_non_exhaustive()
    }
}
