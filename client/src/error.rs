//! One error enum per operation, each variant a reason the application can act on.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use natter_core::crypto::{UserName, UserNameError};
use natter_core::login::client::LoginClientError;
use natter_core::login::proto::{LoginError as Refused, Version};
use natter_transport::login::client::{ConnectError, LoginFailure, PasswordNeeded};

/// Why [`ClientBuilder::build`](crate::ClientBuilder::build) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No data directory was given and the per-user default could not be found (neither
    /// `XDG_DATA_HOME` nor `HOME` is set).
    #[error("no data directory: set one (ClientBuilder::data_dir), or HOME")]
    NoDataDir,
    /// The data directory could not be created or opened.
    #[error("data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The STUN alternate address must differ from the listen address in both IP and port.
    #[error("STUN alternate {alternate}: needs another IP and another port than the listen address {listen}")]
    StunAlternate {
        /// The alternate address.
        alternate: SocketAddr,
        /// The listen address.
        listen: SocketAddr,
    },
    /// The fallback ports are not usable.
    #[error("fallback ports: {0}")]
    FallbackPorts(String),
    /// The Opus encoder complexity is 0 to 10.
    #[error("encoder complexity {0}: it is 0 to 10")]
    Complexity(u8),
    /// The event queue could not be set up.
    #[error("setting up the event queue: {0}")]
    Events(#[source] io::Error),
}

/// Why bytes given as [`Credentials`](crate::Credentials) are not.
pub use natter_core::crypto::CredentialsError;

/// Why the login server could not be reached (an `Unreachable` reason of the login
/// operations).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Nothing answered at the login server's address, or the connection broke.
    #[error("login server {address} unreachable: {source}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// The server's TLS certificate is not the one the network file pins, or (for a
    /// CA-issued certificate) is not trusted.
    #[error("the login server's TLS certificate was refused: {0}")]
    Certificate(String),
    /// The server failed or broke the protocol.
    #[error("login server error: {0}")]
    Protocol(String),
}

impl ServerError {
    fn from_connect(e: ConnectError, address: &str) -> Self {
        match e {
            ConnectError::Unreachable { address, source } => Self::Unreachable { address, source },
            ConnectError::Io(source) => Self::Unreachable {
                address: address.to_string(),
                source,
            },
            ConnectError::PinMismatch => {
                Self::Certificate("it does not match the network file's pin".into())
            }
            ConnectError::Tls(why) => Self::Certificate(why),
            other => Self::Protocol(other.to_string()),
        }
    }
}

/// Why [`Client::register`](crate::Client::register) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The user name breaks the rules.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule.
        reason: String,
    },
    /// The name is taken (names are unique regardless of case).
    #[error("the user name {0:?} is taken")]
    NameTaken(String),
    /// The password is too weak: at least 10 characters, and not the user name.
    #[error("password too weak: at least 10 characters, and not the user name")]
    WeakPassword,
    /// Too many attempts from this address: wait.
    #[error("too many attempts: try again in {} s", retry_after.as_secs())]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
    },
    /// This version of Natter is too old for the network.
    #[error("this version of Natter is too old: upgrade to {minimum} or newer")]
    UpgradeRequired {
        /// The oldest version the network accepts.
        minimum: Version,
    },
    /// The login server could not be reached or was not trusted.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The device's keys could not be read or created.
    #[error("device keys in {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Cancelled ([`Client::cancel_request`](crate::Client::cancel_request)).
    #[error("cancelled")]
    Cancelled,
}

/// Why [`Client::login`](crate::Client::login) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The user name breaks the rules.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule.
        reason: String,
    },
    /// Wrong password.
    #[error("wrong password")]
    WrongPassword,
    /// No such user: register first.
    #[error("unknown user: register first")]
    UnknownUser,
    /// The stored certificate cannot be renewed without the password (see why), and none
    /// was given.
    #[error("{0}: log in with the password")]
    PasswordNeeded(PasswordNeeded),
    /// Too many failed attempts, or too many new devices for the account or from this
    /// address lately (5 a day per account): wait.
    #[error("too many attempts: try again in {} s", retry_after.as_secs())]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
    },
    /// This version of Natter is too old for the network.
    #[error("this version of Natter is too old: upgrade to {minimum} or newer")]
    UpgradeRequired {
        /// The oldest version the network accepts.
        minimum: Version,
    },
    /// This device was revoked by the login authority (its certificate is forgotten).
    #[error("this device was revoked")]
    Revoked,
    /// The certificate the login server issued is unusable (signed by an authority the
    /// network file does not list, for other keys).
    #[error("the login server issued an unacceptable certificate: {0}")]
    Certificate(String),
    /// The login server could not be reached or was not trusted.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The device's keys or certificate could not be read or stored.
    #[error("device credentials in {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The client runs as another user: stop it first.
    #[error("the client runs as {running}: stop it before logging in as someone else")]
    OtherUserRunning {
        /// Who it runs as.
        running: UserName,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// Cancelled ([`Client::cancel_request`](crate::Client::cancel_request)). The client is
    /// not logged in by it (a certificate the server issued just before may still have been
    /// stored, to be renewed by the next login).
    #[error("cancelled")]
    Cancelled,
}

/// Why an account operation failed: [`Client::devices`](crate::Client::devices),
/// [`Client::revoke_device`](crate::Client::revoke_device),
/// [`Client::change_password`](crate::Client::change_password),
/// [`Client::logout`](crate::Client::logout).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// Log in first: account operations act for the logged-in user.
    #[error("not logged in")]
    NotLoggedIn,
    /// Wrong password.
    #[error("wrong password")]
    WrongPassword,
    /// The new password is too weak: at least 10 characters, and not the user name.
    #[error("password too weak: at least 10 characters, and not the user name")]
    WeakPassword,
    /// Too many failed attempts: wait.
    #[error("too many attempts: try again in {} s", retry_after.as_secs())]
    Throttled {
        /// How long to wait.
        retry_after: Duration,
    },
    /// No such device on this account.
    #[error("unknown device")]
    UnknownDevice,
    /// A device cannot revoke itself (change the password with `revoke_others` from another
    /// device, or revoke this one from there).
    #[error("this is the device asking: revoke it from another device")]
    ThisDevice,
    /// This device was revoked.
    #[error("this device was revoked")]
    Revoked,
    /// This device's certificate is not accepted any more: log in again.
    #[error("this device's certificate is not accepted: log in again")]
    CertificateRefused,
    /// The login server could not be reached or was not trusted.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The device's keys could not be read.
    #[error("device keys in {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl AccountError {
    pub(crate) fn from_client_error(e: LoginClientError) -> Self {
        match e {
            LoginClientError::Refused(r) => match r {
                Refused::WrongPassword => Self::WrongPassword,
                Refused::WeakPassword => Self::WeakPassword,
                Refused::Throttled { retry_after_secs } => Self::Throttled {
                    retry_after: Duration::from_secs(u64::from(retry_after_secs)),
                },
                Refused::UnknownDevice => Self::UnknownDevice,
                Refused::Revoked => Self::Revoked,
                Refused::BadProof | Refused::RenewalExpired | Refused::UnknownUser => {
                    Self::CertificateRefused
                }
                other => Self::Server(ServerError::Protocol(other.to_string())),
            },
            other => Self::Server(ServerError::Protocol(other.to_string())),
        }
    }

    pub(crate) fn from_connect(e: ConnectError, address: &str) -> Self {
        Self::Server(ServerError::from_connect(e, address))
    }
}

/// Why [`Client::start`](crate::Client::start) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Log in first.
    #[error("not logged in")]
    NotLoggedIn,
    /// The client is running already.
    #[error("already started")]
    AlreadyStarted,
    /// The listen address (or, for a super node, one of its ports) could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The network file's authority keys or overlay settings are unusable.
    #[error("network file: {0}")]
    Network(String),
    /// The operating system refused something else (randomness, a thread).
    #[error("starting: {0}")]
    Io(#[source] io::Error),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

/// Why [`Client::stop`](crate::Client::stop) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// The client was not started.
    #[error("not started")]
    NotStarted,
}

/// Why a call could not be placed, or a command on a call could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The client is not started.
    #[error("not started")]
    NotStarted,
    /// The user name breaks the rules.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule.
        reason: String,
    },
    /// This client already has a call: a device has at most one.
    #[error("already in a call")]
    InCall,
    /// No such call (never existed here, or ended long ago).
    #[error("unknown call")]
    UnknownCall,
    /// Not possible in the call's state (answering an outgoing call, holding a call that is
    /// not connected, anything on a call that ended).
    #[error("not possible in this call state")]
    WrongState,
    /// The call's audio does not come from (or go to) a device: it uses WAV files, a tone or
    /// the application's PCM.
    #[error("the call does not use an audio device")]
    NotDeviceAudio,
    /// The audio device could not be opened: the call keeps the one it had.
    #[error("audio device: {0}")]
    Device(String),
}

/// Why [`Client::search`](crate::Client::search) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The client is not started.
    #[error("not started")]
    NotStarted,
    /// The user name breaks the rules.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Which rule.
        reason: String,
    },
}

/// Why [`Call::push_pcm`](crate::Call::push_pcm) or [`Call::pull_pcm`](crate::Call::pull_pcm)
/// failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PcmError {
    /// The call has no application audio: it is not connected (yet, or any more), or its
    /// audio is not [`AudioInput::App`](crate::AudioInput::App) /
    /// [`AudioOutput::App`](crate::AudioOutput::App).
    #[error("the call has no application audio now")]
    NoAppAudio,
    /// No such call (forgotten: only the last 16 ended calls are kept).
    #[error("unknown call")]
    UnknownCall,
}

pub(crate) fn parse_name(name: &str) -> Result<UserName, (String, UserNameError)> {
    UserName::parse(name).map_err(|e| (name.to_string(), e))
}

impl LoginError {
    pub(crate) fn from_failure(
        e: LoginFailure,
        user: &str,
        address: &str,
        device_dir: PathBuf,
    ) -> Self {
        match e {
            LoginFailure::Connect(ConnectError::Cancelled) => Self::Cancelled,
            LoginFailure::Connect(c) => Self::Server(ServerError::from_connect(c, address)),
            LoginFailure::WrongPassword => Self::WrongPassword,
            LoginFailure::UnknownUser => Self::UnknownUser,
            LoginFailure::Throttled { retry_after_secs } => Self::Throttled {
                retry_after: Duration::from_secs(u64::from(retry_after_secs)),
            },
            LoginFailure::UpgradeRequired { minimum } => Self::UpgradeRequired { minimum },
            LoginFailure::InvalidName => Self::InvalidName {
                name: user.to_string(),
                reason: "refused by the login server".into(),
            },
            LoginFailure::Revoked => Self::Revoked,
            LoginFailure::PasswordNeeded(why) => Self::PasswordNeeded(why),
            LoginFailure::BadCertificate(c) => Self::Certificate(c.to_string()),
            LoginFailure::Credentials(source) => Self::Io {
                path: device_dir,
                source,
            },
            LoginFailure::Server(why) => Self::Server(ServerError::Protocol(why)),
            other => Self::Server(ServerError::Protocol(other.to_string())),
        }
    }
}

impl RegisterError {
    pub(crate) fn from_refusal(e: LoginClientError, user: &str) -> Self {
        match e {
            LoginClientError::Refused(Refused::NameTaken) => Self::NameTaken(user.to_string()),
            LoginClientError::Refused(Refused::InvalidName) => Self::InvalidName {
                name: user.to_string(),
                reason: "refused by the login server".into(),
            },
            LoginClientError::Refused(Refused::WeakPassword) => Self::WeakPassword,
            LoginClientError::Refused(Refused::Throttled { retry_after_secs }) => Self::Throttled {
                retry_after: Duration::from_secs(u64::from(retry_after_secs)),
            },
            LoginClientError::UpgradeRequired { minimum } => Self::UpgradeRequired { minimum },
            other => Self::Server(ServerError::Protocol(other.to_string())),
        }
    }

    pub(crate) fn from_connect(e: ConnectError, address: &str) -> Self {
        match e {
            ConnectError::Cancelled => Self::Cancelled,
            e => Self::Server(ServerError::from_connect(e, address)),
        }
    }
}

/// Why a buddy-list operation failed: the edits ([`Client::add_contact`](crate::Client::add_contact)
/// and the others) and [`Client::sync_contacts`](crate::Client::sync_contacts). A failed sync
/// leaves the local list as it was, edits included (they are stored by a later sync).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactsError {
    /// Log in first: the list is the logged-in user's.
    #[error("not logged in")]
    NotLoggedIn,
    /// Not a user name.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is not one.
        reason: String,
    },
    /// A contact request went to a user who does not exist.
    #[error("no such user: {0}")]
    UnknownUser(String),
    /// The edit does not fit the list (too many entries or groups, a text too long).
    #[error(transparent)]
    Edit(natter_core::contacts::ListError),
    /// This device has no key for the list's backup yet, or the account has no backup and
    /// this device must make its key's envelope: sync once with the password (a login with
    /// the password does).
    #[error("the buddy list's key is not on this device: log in with the password once")]
    PasswordNeeded,
    /// The backup's key is wrapped under another password (a password change whose device
    /// has not stored the list since): log in with the password on a device that has the
    /// list, or keep using this device's own list.
    #[error("the buddy list backup's key does not open with this password")]
    KeyUnavailable,
    /// The backup in the network was refused (altered, truncated, older than one already
    /// seen, another account's, from the future). The local list is kept.
    #[error("buddy list backup refused: {0}")]
    Backup(#[from] natter_core::contacts::BackupError),
    /// Other devices stored the list again and again meanwhile: tried again later.
    #[error("the buddy list changed on other devices during the sync: try again")]
    Conflict,
    /// The login server could not be reached, or refused this device.
    #[error("buddy list backup: {0}")]
    Server(AccountError),
    /// The list file could not be written (the edit was not made), or the device's keys
    /// could not be read.
    #[error("buddy list in {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl ContactsError {
    /// Whether trying again later may work (the server unreachable, a conflict), as opposed
    /// to a reason only the user can lift (the password, a refused backup).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Conflict | Self::Io { .. } => true,
            Self::Server(e) => {
                matches!(e, AccountError::Server(_) | AccountError::Throttled { .. })
            }
            _ => false,
        }
    }
}

/// Why a chat operation failed. Nothing was stored or sent then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// Log in first: the history is the logged-in user's.
    #[error("not logged in")]
    NotLoggedIn,
    /// Not a user name.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is not one.
        reason: String,
    },
    /// The text is longer than [`MAX_MESSAGE_TEXT`](crate::MAX_MESSAGE_TEXT) bytes.
    #[error("message too long: {len} bytes (at most {max})")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No message with this id in the history.
    #[error("no message {0} in the history")]
    UnknownMessage(String),
    /// The history file could not be read or written.
    #[error("chat history: {0}")]
    Store(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}
