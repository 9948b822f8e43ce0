//! Login protocol messages.
//!
//! They travel over TLS 1.3 to the login server, one message per frame of
//! [`crate::wire::frame`] (a big-endian `u16` length, then `[type u8][fields]`). Strings are
//! UTF-8 with a one-byte length; passwords are at most [`MAX_PASSWORD`] bytes.
//!
//! A connection starts with [`Request::Hello`] (client version, first start), answered by
//! [`Response::Hello`] (version verdict, a fresh challenge and a fresh X25519 key). Requests that
//! prove possession of a device's keys sign the challenge with the Ed25519 key
//! ([`proof_message`]) and MAC the same message with the Diffie-Hellman of the device's X25519
//! key and the server's fresh key ([`crate::crypto::dh_mac`]), so a recorded request cannot be
//! replayed on another connection and nobody gets a certificate for a key they do not hold.

use bytes::{BufMut, BytesMut};

use crate::crypto::{Certificate, DeviceId, UnixTime, UserName};
use crate::wire::{DecodeError, Reader};

/// Longest password accepted, in bytes (Argon2 takes any length; this bounds the work a request
/// can cause and the frame size).
pub const MAX_PASSWORD: usize = 128;
/// Most revocation entries in one [`Response::Revocations`] page.
pub const MAX_REVOCATIONS_PER_PAGE: usize = 1000;
/// Domain separation for proofs of possession.
pub const PROOF_CONTEXT: &[u8] = b"natter-login-proof-v1";
/// Domain separation for the X25519 proof of possession ([`DeviceKeys::dh_proof`]).
pub const DH_PROOF_CONTEXT: &[u8] = b"natter-login-dh-proof-v1";
/// Domain separation for signed revocation pages.
pub const REVOCATION_CONTEXT: &[u8] = b"natter-revocations-v1";

/// A software version, compared lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
    /// Patch.
    pub patch: u16,
}

impl Version {
    /// A version.
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parse `MAJOR.MINOR.PATCH`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u16>().ok());
        let v = Self::new(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }

    fn put(&self, out: &mut BytesMut) {
        out.put_u16(self.major);
        out.put_u16(self.minor);
        out.put_u16(self.patch);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self::new(r.u16()?, r.u16()?, r.u16()?))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A device's public keys and its proof of possession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeys {
    /// Ed25519 public key.
    pub signing_public: [u8; 32],
    /// X25519 public key.
    pub dh_public: [u8; 32],
    /// Signature by the Ed25519 key over [`proof_message`].
    pub proof: [u8; 64],
    /// MAC over [`proof_message`] keyed by the Diffie-Hellman of the X25519 key with the
    /// server's key from [`Response::Hello`] (context [`DH_PROOF_CONTEXT`]).
    pub dh_proof: [u8; 32],
}

/// The message a device signs to prove it holds its keys on this connection.
pub fn proof_message(
    challenge: &[u8; 32],
    user: &UserName,
    signing_public: &[u8; 32],
    dh_public: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + 1 + user.as_str().len() + 64);
    m.extend_from_slice(challenge);
    m.push(user.as_str().len() as u8);
    m.extend_from_slice(user.as_str().as_bytes());
    m.extend_from_slice(signing_public);
    m.extend_from_slice(dh_public);
    m
}

/// Client to server.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// First message: who is calling.
    Hello {
        /// The client's version.
        version: Version,
        /// True on the first start after installation.
        first_start: bool,
    },
    /// Create an account.
    Register {
        /// Requested name (validated and canonicalised by the server too).
        user: String,
        /// The password.
        password: String,
    },
    /// Log in with the password and get the device certified.
    Login {
        /// The account.
        user: String,
        /// The password.
        password: String,
        /// The device to certify.
        device: DeviceKeys,
    },
    /// Get a fresh certificate without the password, for a device whose keys did not change.
    Renew {
        /// The current (possibly recently expired) certificate.
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key (as [`DeviceKeys::dh_proof`]).
        dh_proof: [u8; 32],
    },
    /// Change the password.
    ChangePassword {
        /// The account.
        user: String,
        /// The current password.
        old: String,
        /// The new password.
        new: String,
        /// Revoke every other device of the account, keeping this one (the asking device: a
        /// password that leaked may have certified devices the user does not know).
        keep_only: Option<DeviceId>,
    },
    /// Revoke one of the account's devices.
    RevokeDevice {
        /// The account.
        user: String,
        /// Its password.
        password: String,
        /// The device.
        device: DeviceId,
    },
    /// Delete the account (its devices are revoked).
    DeleteAccount {
        /// The account.
        user: String,
        /// Its password.
        password: String,
    },
    /// Fetch revocations with serial greater than `since` (super nodes do this).
    Revocations {
        /// Last serial already known (0 for all).
        since: u64,
    },
    /// List the account's devices, asked by a certified device of it (proved as for
    /// [`Request::Renew`]; no password).
    Devices {
        /// The asking device's certificate (valid now: an expired one renews first).
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key.
        dh_proof: [u8; 32],
    },
    /// Fetch the account's buddy-list backup and its key's envelope, asked by a certified
    /// device of it (proved as for [`Request::Devices`]). Answered by
    /// [`Response::BuddyList`].
    GetBuddyList {
        /// The asking device's certificate.
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key.
        dh_proof: [u8; 32],
    },
    /// Leave a contact request for user `to` (every device of theirs fetches it), asked by a
    /// certified device of the sender (proved as for [`Request::Devices`]). A second request
    /// to the same user replaces the first. Refused with [`LoginError::UnknownUser`] when
    /// `to` does not exist, [`LoginError::Throttled`] when the sender has
    /// [`MAX_REQUESTS_SENT`] requests waiting or the recipient [`MAX_REQUESTS_WAITING`].
    SendContactRequest {
        /// The asking device's certificate.
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key.
        dh_proof: [u8; 32],
        /// The user asked.
        to: String,
        /// A note for them, at most [`MAX_REQUEST_NOTE`] bytes of UTF-8.
        note: String,
        /// The answer to their request: an acceptance.
        accepting: bool,
    },
    /// The contact requests waiting for the account (the oldest [`MAX_REQUESTS_LISTED`]),
    /// asked by a certified device of it. Answered by [`Response::ContactRequests`].
    GetContactRequests {
        /// The asking device's certificate.
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key.
        dh_proof: [u8; 32],
    },
    /// Delete contact requests waiting for the account (answered on one of its devices).
    DeleteContactRequests {
        /// The asking device's certificate.
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key.
        dh_proof: [u8; 32],
        /// Their ids (at most [`MAX_REQUESTS_LISTED`]; unknown ones are ignored).
        ids: Vec<u64>,
    },
    /// Store a new buddy-list backup (opaque to the server: `natter_core::contacts::backup`)
    /// in place of version `base`, asked by a certified device of the account. Refused with
    /// [`LoginError::VersionConflict`] when the stored version is not `base` (another device
    /// stored one since: fetch it, merge, try again).
    PutBuddyList {
        /// The asking device's certificate.
        certificate: Certificate,
        /// Proof of possession of the certified Ed25519 key.
        proof: [u8; 64],
        /// Proof of possession of the certified X25519 key.
        dh_proof: [u8; 32],
        /// The version this one replaces (0: none stored yet).
        base: u64,
        /// This backup's version (above `base`).
        version: u64,
        /// The backup, at most [`MAX_BUDDY_BACKUP`] bytes.
        backup: Vec<u8>,
        /// The list key's envelope (`natter_core::contacts::envelope`); empty keeps the
        /// stored one.
        envelope: Vec<u8>,
    },
}

/// The largest buddy-list backup a login message carries (what fits one 64 KiB frame with
/// the request's other fields): about 1,300 contacts.
pub const MAX_BUDDY_BACKUP: usize = crate::contacts::backup::MAX_BACKUP_LEN;
/// The largest list-key envelope.
pub const MAX_BUDDY_ENVELOPE: usize = 255;

/// One device of an account, as [`Response::Devices`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSummary {
    /// The device.
    pub device: DeviceId,
    /// When it was first certified.
    pub first_seen: UnixTime,
    /// When it last logged in or renewed its certificate.
    pub last_seen: UnixTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// Most devices in one [`Response::Devices`]: the devices in use first, then the most
/// recently revoked.
pub const MAX_DEVICES_LISTED: usize = 64;

/// One contact request waiting for a user, as [`Response::ContactRequests`] lists it. The
/// sender is the account the login server authenticated (its device proved its certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRequest {
    /// The server's id for it (to delete it once answered).
    pub id: u64,
    /// Who asks.
    pub from: UserName,
    /// Their note (at most [`MAX_REQUEST_NOTE`] bytes).
    pub note: String,
    /// It answers a request of the recipient's: an acceptance.
    pub accepting: bool,
    /// When it was left.
    pub sent_at: UnixTime,
}

/// The longest note of a contact request, bytes of UTF-8.
pub const MAX_REQUEST_NOTE: usize = 1024;
/// Most contact requests in one [`Response::ContactRequests`] (what fits a frame).
pub const MAX_REQUESTS_LISTED: usize = 48;
/// Most contact requests waiting for one user: beyond, new ones are refused (a flood of
/// requests cannot fill anyone's storage).
pub const MAX_REQUESTS_WAITING: usize = 100;
/// How long a contact request waits for an answer, seconds (30 days): older ones leave when
/// their sender or recipient is next sent a request, freeing both limits.
pub const REQUEST_LIFETIME_SECS: u64 = 30 * 86_400;
/// Most contact requests one user may have waiting at others (a sender cannot flood many
/// users, and a flood of new accounts is held back where accounts are made).
pub const MAX_REQUESTS_SENT: usize = 30;

impl std::fmt::Debug for Request {
    // Passwords never appear in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Hello {
                version,
                first_start,
            } => write!(f, "Hello({version}, first_start: {first_start})"),
            Request::Register { user, .. } => write!(f, "Register({user:?})"),
            Request::Login { user, .. } => write!(f, "Login({user:?})"),
            Request::Renew { certificate, .. } => {
                write!(f, "Renew({}, {:?})", certificate.user, certificate.device)
            }
            Request::ChangePassword { user, .. } => write!(f, "ChangePassword({user:?})"),
            Request::RevokeDevice { user, device, .. } => {
                write!(f, "RevokeDevice({user:?}, {device:?})")
            }
            Request::DeleteAccount { user, .. } => write!(f, "DeleteAccount({user:?})"),
            Request::Revocations { since } => write!(f, "Revocations(since {since})"),
            Request::Devices { certificate, .. } => {
                write!(f, "Devices({}, {:?})", certificate.user, certificate.device)
            }
            Request::SendContactRequest {
                certificate, to, ..
            } => write!(f, "SendContactRequest({} -> {to:?})", certificate.user),
            Request::GetContactRequests { certificate, .. } => {
                write!(f, "GetContactRequests({})", certificate.user)
            }
            Request::DeleteContactRequests {
                certificate, ids, ..
            } => write!(
                f,
                "DeleteContactRequests({}, {} ids)",
                certificate.user,
                ids.len()
            ),
            Request::GetBuddyList { certificate, .. } => {
                write!(
                    f,
                    "GetBuddyList({}, {:?})",
                    certificate.user, certificate.device
                )
            }
            Request::PutBuddyList {
                certificate,
                base,
                version,
                backup,
                ..
            } => write!(
                f,
                "PutBuddyList({}, {:?}, {base} -> {version}, {} bytes)",
                certificate.user,
                certificate.device,
                backup.len()
            ),
        }
    }
}

/// The server's verdict on the client's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    /// Fine.
    Ok,
    /// Works, but a newer version exists.
    UpgradeRecommended {
        /// The recommended version.
        latest: Version,
    },
    /// Too old: the server refuses everything else.
    UpgradeRequired {
        /// The oldest version accepted.
        minimum: Version,
    },
}

/// Why the server refused a request. Stable numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Wrong password.
    #[error("wrong password")]
    WrongPassword,
    /// No such user.
    #[error("unknown user")]
    UnknownUser,
    /// The user name is taken.
    #[error("user name is taken")]
    NameTaken,
    /// The user name breaks the rules (3-32 characters, letters, digits, '.', '_', '-',
    /// starting with a letter).
    #[error("invalid user name")]
    InvalidName,
    /// The password breaks the policy.
    #[error("password too weak: at least 10 characters, and not the user name")]
    WeakPassword,
    /// Too many failures: try again later.
    #[error("too many failed attempts; retry in {retry_after_secs} s")]
    Throttled {
        /// Seconds to wait.
        retry_after_secs: u32,
    },
    /// The client is too old.
    #[error("upgrade required")]
    UpgradeRequired,
    /// The device is revoked.
    #[error("device revoked")]
    Revoked,
    /// The proof of possession or the certificate was invalid.
    #[error("invalid device proof or certificate")]
    BadProof,
    /// No such device on this account.
    #[error("unknown device")]
    UnknownDevice,
    /// The request broke the protocol (e.g. no Hello first).
    #[error("protocol error")]
    Protocol,
    /// The server failed internally (storage down); retry later.
    #[error("server error")]
    Server,
    /// The certificate expired longer ago than the renewal grace period: it can no longer be
    /// renewed without the password, so log in with it.
    #[error("certificate expired too long ago to renew: log in with the password")]
    RenewalExpired,
    /// The stored buddy list is not the version the update replaces: fetch it, merge, retry.
    #[error("the stored buddy list changed: fetch it, merge and retry")]
    VersionConflict,
}

impl LoginError {
    fn code(&self) -> u8 {
        match self {
            Self::WrongPassword => 1,
            Self::UnknownUser => 2,
            Self::NameTaken => 3,
            Self::InvalidName => 4,
            Self::WeakPassword => 5,
            Self::Throttled { .. } => 6,
            Self::UpgradeRequired => 7,
            Self::Revoked => 8,
            Self::BadProof => 9,
            Self::UnknownDevice => 10,
            Self::Protocol => 11,
            Self::Server => 12,
            Self::RenewalExpired => 13,
            Self::VersionConflict => 14,
        }
    }
}

/// One revoked device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedDevice {
    /// Serial in the server's list.
    pub serial: u64,
    /// The device.
    pub device: DeviceId,
    /// When it was revoked.
    pub revoked_at: UnixTime,
}

/// A page of the revocation list, signed by the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationPage {
    /// The `since` this page answers.
    pub since: u64,
    /// Entries with serial > since, ascending.
    pub entries: Vec<RevokedDevice>,
    /// True when no entries follow this page.
    pub complete: bool,
    /// When the server signed it.
    pub issued_at: UnixTime,
    /// Authority signature over [`RevocationPage::signed_bytes`].
    pub signature: [u8; 64],
}

impl RevocationPage {
    /// The bytes the authority signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        self.put_body(&mut b);
        b.to_vec()
    }

    fn put_body(&self, b: &mut BytesMut) {
        b.put_u64(self.since);
        b.put_u8(u8::from(self.complete));
        b.put_u64(self.issued_at.0);
        b.put_u16(self.entries.len() as u16);
        for e in &self.entries {
            b.put_u64(e.serial);
            b.put_slice(&e.device.0);
            b.put_u64(e.revoked_at.0);
        }
    }
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Answer to Hello.
    Hello {
        /// The version verdict.
        status: VersionStatus,
        /// A fresh random challenge for proofs of possession on this connection.
        challenge: [u8; 32],
        /// A fresh X25519 public key for this connection: devices prove they hold their
        /// X25519 key with a MAC keyed by its Diffie-Hellman with this one.
        server_key: [u8; 32],
    },
    /// The account was created.
    Registered,
    /// The device is certified (login or renewal).
    Certified {
        /// The new certificate.
        certificate: Certificate,
    },
    /// The request succeeded (password change, revocation, deletion).
    Done,
    /// A page of revocations.
    Revocations(RevocationPage),
    /// The account's devices (at most [`MAX_DEVICES_LISTED`]).
    Devices(Vec<DeviceSummary>),
    /// The account's buddy-list backup and envelope (version 0 and both empty: none stored).
    BuddyList {
        /// The backup's version.
        version: u64,
        /// The backup.
        backup: Vec<u8>,
        /// The list key's envelope.
        envelope: Vec<u8>,
    },
    /// The contact requests waiting for the account, oldest first (at most
    /// [`MAX_REQUESTS_LISTED`]).
    ContactRequests(Vec<ContactRequest>),
    /// The request failed.
    Error(LoginError),
}

const REQ_HELLO: u8 = 1;
const REQ_REGISTER: u8 = 2;
const REQ_LOGIN: u8 = 3;
const REQ_RENEW: u8 = 4;
const REQ_CHANGE_PASSWORD: u8 = 5;
const REQ_REVOKE: u8 = 6;
const REQ_DELETE: u8 = 7;
const REQ_REVOCATIONS: u8 = 8;
const REQ_DEVICES: u8 = 9;
const REQ_GET_BUDDY_LIST: u8 = 10;
const REQ_PUT_BUDDY_LIST: u8 = 11;
const REQ_SEND_CONTACT_REQUEST: u8 = 12;
const REQ_GET_CONTACT_REQUESTS: u8 = 13;
const REQ_DELETE_CONTACT_REQUESTS: u8 = 14;

const RESP_HELLO: u8 = 0x81;
const RESP_REGISTERED: u8 = 0x82;
const RESP_CERTIFIED: u8 = 0x83;
const RESP_DONE: u8 = 0x84;
const RESP_REVOCATIONS: u8 = 0x85;
const RESP_ERROR: u8 = 0x86;
const RESP_DEVICES: u8 = 0x87;
const RESP_BUDDY_LIST: u8 = 0x88;
const RESP_CONTACT_REQUESTS: u8 = 0x89;

fn put_str(out: &mut BytesMut, s: &str) {
    let b = s.as_bytes();
    let n = b.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&b[..n]);
}

/// A byte string with a two-byte length, cut at `max` (the decoder refuses longer ones).
fn put_blob(out: &mut BytesMut, b: &[u8], max: usize) {
    let n = b.len().min(max);
    out.put_u16(n as u16);
    out.put_slice(&b[..n]);
}

/// A contact request's note: a two-byte length, UTF-8.
fn read_note(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let b = r.bytes_u16("request note", MAX_REQUEST_NOTE)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid("request note"))
}

fn read_str(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<String, DecodeError> {
    let b = r.bytes_u8(what, max)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid(what))
}

impl Request {
    /// The certificate and proofs of possession of a request asked by a certified device on
    /// its own account's behalf (`Devices`, the buddy list, contact requests); `None` for
    /// the others (a renewal proves its keys under its own rules).
    pub fn proved_by(&self) -> Option<(&Certificate, &[u8; 64], &[u8; 32])> {
        match self {
            Request::Devices {
                certificate,
                proof,
                dh_proof,
            }
            | Request::GetBuddyList {
                certificate,
                proof,
                dh_proof,
            }
            | Request::PutBuddyList {
                certificate,
                proof,
                dh_proof,
                ..
            }
            | Request::SendContactRequest {
                certificate,
                proof,
                dh_proof,
                ..
            }
            | Request::GetContactRequests {
                certificate,
                proof,
                dh_proof,
            }
            | Request::DeleteContactRequests {
                certificate,
                proof,
                dh_proof,
                ..
            } => Some((certificate, proof, dh_proof)),
            _ => None,
        }
    }

    /// Append the encoded request.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Request::Hello {
                version,
                first_start,
            } => {
                out.put_u8(REQ_HELLO);
                version.put(out);
                out.put_u8(u8::from(*first_start));
            }
            Request::Register { user, password } => {
                out.put_u8(REQ_REGISTER);
                put_str(out, user);
                put_str(out, password);
            }
            Request::Login {
                user,
                password,
                device,
            } => {
                out.put_u8(REQ_LOGIN);
                put_str(out, user);
                put_str(out, password);
                out.put_slice(&device.signing_public);
                out.put_slice(&device.dh_public);
                out.put_slice(&device.proof);
                out.put_slice(&device.dh_proof);
            }
            Request::Renew {
                certificate,
                proof,
                dh_proof,
            } => {
                out.put_u8(REQ_RENEW);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
            }
            Request::ChangePassword {
                user,
                old,
                new,
                keep_only,
            } => {
                out.put_u8(REQ_CHANGE_PASSWORD);
                put_str(out, user);
                put_str(out, old);
                put_str(out, new);
                out.put_u8(u8::from(keep_only.is_some()));
                if let Some(d) = keep_only {
                    out.put_slice(&d.0);
                }
            }
            Request::RevokeDevice {
                user,
                password,
                device,
            } => {
                out.put_u8(REQ_REVOKE);
                put_str(out, user);
                put_str(out, password);
                out.put_slice(&device.0);
            }
            Request::DeleteAccount { user, password } => {
                out.put_u8(REQ_DELETE);
                put_str(out, user);
                put_str(out, password);
            }
            Request::Revocations { since } => {
                out.put_u8(REQ_REVOCATIONS);
                out.put_u64(*since);
            }
            Request::Devices {
                certificate,
                proof,
                dh_proof,
            } => {
                out.put_u8(REQ_DEVICES);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
            }
            Request::GetBuddyList {
                certificate,
                proof,
                dh_proof,
            } => {
                out.put_u8(REQ_GET_BUDDY_LIST);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
            }
            Request::PutBuddyList {
                certificate,
                proof,
                dh_proof,
                base,
                version,
                backup,
                envelope,
            } => {
                out.put_u8(REQ_PUT_BUDDY_LIST);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
                out.put_u64(*base);
                out.put_u64(*version);
                put_blob(out, backup, MAX_BUDDY_BACKUP);
                put_blob(out, envelope, MAX_BUDDY_ENVELOPE);
            }
            Request::SendContactRequest {
                certificate,
                proof,
                dh_proof,
                to,
                note,
                accepting,
            } => {
                out.put_u8(REQ_SEND_CONTACT_REQUEST);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
                put_str(out, to);
                put_blob(out, note.as_bytes(), MAX_REQUEST_NOTE);
                out.put_u8(u8::from(*accepting));
            }
            Request::GetContactRequests {
                certificate,
                proof,
                dh_proof,
            } => {
                out.put_u8(REQ_GET_CONTACT_REQUESTS);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
            }
            Request::DeleteContactRequests {
                certificate,
                proof,
                dh_proof,
                ids,
            } => {
                out.put_u8(REQ_DELETE_CONTACT_REQUESTS);
                certificate.encode(out);
                out.put_slice(proof);
                out.put_slice(dh_proof);
                let n = ids.len().min(MAX_REQUESTS_LISTED);
                out.put_u8(n as u8);
                for id in &ids[..n] {
                    out.put_u64(*id);
                }
            }
        }
    }

    /// Decode one request.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let name = |r: &mut Reader<'_>| read_str(r, "user name", UserName::MAX_LEN);
        let pass = |r: &mut Reader<'_>| read_str(r, "password", MAX_PASSWORD);
        let req = match r.u8()? {
            REQ_HELLO => Request::Hello {
                version: Version::read(&mut r)?,
                first_start: r.bool("first_start")?,
            },
            REQ_REGISTER => Request::Register {
                user: name(&mut r)?,
                password: pass(&mut r)?,
            },
            REQ_LOGIN => Request::Login {
                user: name(&mut r)?,
                password: pass(&mut r)?,
                device: DeviceKeys {
                    signing_public: r.array()?,
                    dh_public: r.array()?,
                    proof: r.array()?,
                    dh_proof: r.array()?,
                },
            },
            REQ_RENEW => Request::Renew {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
            },
            REQ_CHANGE_PASSWORD => Request::ChangePassword {
                user: name(&mut r)?,
                old: pass(&mut r)?,
                new: pass(&mut r)?,
                keep_only: if r.bool("keep_only")? {
                    Some(DeviceId(r.array()?))
                } else {
                    None
                },
            },
            REQ_REVOKE => Request::RevokeDevice {
                user: name(&mut r)?,
                password: pass(&mut r)?,
                device: DeviceId(r.array()?),
            },
            REQ_DELETE => Request::DeleteAccount {
                user: name(&mut r)?,
                password: pass(&mut r)?,
            },
            REQ_REVOCATIONS => Request::Revocations { since: r.u64()? },
            REQ_DEVICES => Request::Devices {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
            },
            REQ_GET_BUDDY_LIST => Request::GetBuddyList {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
            },
            REQ_PUT_BUDDY_LIST => Request::PutBuddyList {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
                base: r.u64()?,
                version: r.u64()?,
                backup: r.bytes_u16("buddy-list backup", MAX_BUDDY_BACKUP)?.to_vec(),
                envelope: r
                    .bytes_u16("list-key envelope", MAX_BUDDY_ENVELOPE)?
                    .to_vec(),
            },
            REQ_SEND_CONTACT_REQUEST => Request::SendContactRequest {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
                to: name(&mut r)?,
                note: read_note(&mut r)?,
                accepting: r.bool("accepting")?,
            },
            REQ_GET_CONTACT_REQUESTS => Request::GetContactRequests {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
            },
            REQ_DELETE_CONTACT_REQUESTS => Request::DeleteContactRequests {
                certificate: Certificate::read(&mut r)?,
                proof: r.array()?,
                dh_proof: r.array()?,
                ids: {
                    let n = usize::from(r.u8()?);
                    if n > MAX_REQUESTS_LISTED {
                        return Err(DecodeError::TooLong {
                            what: "request ids",
                            len: n,
                            max: MAX_REQUESTS_LISTED,
                        });
                    }
                    (0..n).map(|_| r.u64()).collect::<Result<_, _>>()?
                },
            },
            t => return Err(DecodeError::UnknownMessageType(t)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// Append the encoded response.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Response::Hello {
                status,
                challenge,
                server_key,
            } => {
                out.put_u8(RESP_HELLO);
                match status {
                    VersionStatus::Ok => {
                        out.put_u8(0);
                        Version::default().put(out);
                    }
                    VersionStatus::UpgradeRecommended { latest } => {
                        out.put_u8(1);
                        latest.put(out);
                    }
                    VersionStatus::UpgradeRequired { minimum } => {
                        out.put_u8(2);
                        minimum.put(out);
                    }
                }
                out.put_slice(challenge);
                out.put_slice(server_key);
            }
            Response::Registered => out.put_u8(RESP_REGISTERED),
            Response::Certified { certificate } => {
                out.put_u8(RESP_CERTIFIED);
                certificate.encode(out);
            }
            Response::Done => out.put_u8(RESP_DONE),
            Response::Revocations(page) => {
                out.put_u8(RESP_REVOCATIONS);
                page.put_body(out);
                out.put_slice(&page.signature);
            }
            Response::Devices(devices) => {
                out.put_u8(RESP_DEVICES);
                let n = devices.len().min(MAX_DEVICES_LISTED);
                out.put_u8(n as u8);
                for d in &devices[..n] {
                    out.put_slice(&d.device.0);
                    out.put_u64(d.first_seen.0);
                    out.put_u64(d.last_seen.0);
                    out.put_u64(d.revoked_at.map_or(0, |t| t.0));
                }
            }
            Response::BuddyList {
                version,
                backup,
                envelope,
            } => {
                out.put_u8(RESP_BUDDY_LIST);
                out.put_u64(*version);
                put_blob(out, backup, MAX_BUDDY_BACKUP);
                put_blob(out, envelope, MAX_BUDDY_ENVELOPE);
            }
            Response::ContactRequests(requests) => {
                out.put_u8(RESP_CONTACT_REQUESTS);
                let n = requests.len().min(MAX_REQUESTS_LISTED);
                out.put_u8(n as u8);
                for q in &requests[..n] {
                    out.put_u64(q.id);
                    put_str(out, q.from.as_str());
                    put_blob(out, q.note.as_bytes(), MAX_REQUEST_NOTE);
                    out.put_u64(q.sent_at.0);
                    out.put_u8(u8::from(q.accepting));
                }
            }
            Response::Error(e) => {
                out.put_u8(RESP_ERROR);
                out.put_u8(e.code());
                if let LoginError::Throttled { retry_after_secs } = e {
                    out.put_u32(*retry_after_secs);
                }
            }
        }
    }

    /// Decode one response.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let resp = match r.u8()? {
            RESP_HELLO => {
                let kind = r.u8()?;
                let v = Version::read(&mut r)?;
                let status = match kind {
                    0 => VersionStatus::Ok,
                    1 => VersionStatus::UpgradeRecommended { latest: v },
                    2 => VersionStatus::UpgradeRequired { minimum: v },
                    _ => return Err(DecodeError::Invalid("version status")),
                };
                Response::Hello {
                    status,
                    challenge: r.array()?,
                    server_key: r.array()?,
                }
            }
            RESP_REGISTERED => Response::Registered,
            RESP_CERTIFIED => Response::Certified {
                certificate: Certificate::read(&mut r)?,
            },
            RESP_DONE => Response::Done,
            RESP_REVOCATIONS => {
                let since = r.u64()?;
                let complete = r.bool("complete")?;
                let issued_at = UnixTime(r.u64()?);
                let n = usize::from(r.u16()?);
                if n > MAX_REVOCATIONS_PER_PAGE {
                    return Err(DecodeError::TooLong {
                        what: "revocation page",
                        len: n,
                        max: MAX_REVOCATIONS_PER_PAGE,
                    });
                }
                let mut entries = Vec::with_capacity(n.min(r.remaining() / 32));
                for _ in 0..n {
                    entries.push(RevokedDevice {
                        serial: r.u64()?,
                        device: DeviceId(r.array()?),
                        revoked_at: UnixTime(r.u64()?),
                    });
                }
                Response::Revocations(RevocationPage {
                    since,
                    entries,
                    complete,
                    issued_at,
                    signature: r.array()?,
                })
            }
            RESP_DEVICES => {
                let n = usize::from(r.u8()?);
                if n > MAX_DEVICES_LISTED {
                    return Err(DecodeError::TooLong {
                        what: "device list",
                        len: n,
                        max: MAX_DEVICES_LISTED,
                    });
                }
                let mut devices = Vec::with_capacity(n.min(r.remaining() / 40));
                for _ in 0..n {
                    devices.push(DeviceSummary {
                        device: DeviceId(r.array()?),
                        first_seen: UnixTime(r.u64()?),
                        last_seen: UnixTime(r.u64()?),
                        revoked_at: match r.u64()? {
                            0 => None,
                            t => Some(UnixTime(t)),
                        },
                    });
                }
                Response::Devices(devices)
            }
            RESP_BUDDY_LIST => Response::BuddyList {
                version: r.u64()?,
                backup: r.bytes_u16("buddy-list backup", MAX_BUDDY_BACKUP)?.to_vec(),
                envelope: r
                    .bytes_u16("list-key envelope", MAX_BUDDY_ENVELOPE)?
                    .to_vec(),
            },
            RESP_CONTACT_REQUESTS => {
                let n = usize::from(r.u8()?);
                if n > MAX_REQUESTS_LISTED {
                    return Err(DecodeError::TooLong {
                        what: "contact requests",
                        len: n,
                        max: MAX_REQUESTS_LISTED,
                    });
                }
                let mut requests = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = r.u64()?;
                    let from = read_str(&mut r, "user name", UserName::MAX_LEN)?;
                    requests.push(ContactRequest {
                        id,
                        from: UserName::parse(&from)
                            .map_err(|_| DecodeError::Invalid("user name"))?,
                        note: read_note(&mut r)?,
                        sent_at: UnixTime(r.u64()?),
                        accepting: r.bool("accepting")?,
                    });
                }
                Response::ContactRequests(requests)
            }
            RESP_ERROR => Response::Error(match r.u8()? {
                1 => LoginError::WrongPassword,
                2 => LoginError::UnknownUser,
                3 => LoginError::NameTaken,
                4 => LoginError::InvalidName,
                5 => LoginError::WeakPassword,
                6 => LoginError::Throttled {
                    retry_after_secs: r.u32()?,
                },
                7 => LoginError::UpgradeRequired,
                8 => LoginError::Revoked,
                9 => LoginError::BadProof,
                10 => LoginError::UnknownDevice,
                11 => LoginError::Protocol,
                12 => LoginError::Server,
                13 => LoginError::RenewalExpired,
                14 => LoginError::VersionConflict,
                _ => return Err(DecodeError::Invalid("error code")),
            }),
            t => return Err(DecodeError::UnknownMessageType(t)),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::TestNetwork;
    use proptest::prelude::{any, prop_oneof, proptest, Just, Strategy};

    fn cert() -> Certificate {
        TestNetwork::new(1).identity("alice").certificate
    }

    fn requests() -> impl Strategy<Value = Request> {
        let s = "[a-z]{0,32}";
        prop_oneof![
            (any::<u16>(), any::<bool>()).prop_map(|(m, f)| Request::Hello {
                version: Version::new(m, 2, 3),
                first_start: f
            }),
            (s, s).prop_map(|(user, password)| Request::Register { user, password }),
            (s, s, any::<[u8; 32]>()).prop_map(|(user, password, k)| Request::Login {
                user,
                password,
                device: DeviceKeys {
                    signing_public: k,
                    dh_public: k,
                    proof: [7; 64],
                    dh_proof: [8; 32],
                }
            }),
            Just(Request::Renew {
                certificate: cert(),
                proof: [1; 64],
                dh_proof: [2; 32],
            }),
            (s, s, s, any::<Option<[u8; 16]>>()).prop_map(|(user, old, new, keep)| {
                Request::ChangePassword {
                    user,
                    old,
                    new,
                    keep_only: keep.map(DeviceId),
                }
            }),
            (s, s, any::<[u8; 16]>()).prop_map(|(user, password, d)| Request::RevokeDevice {
                user,
                password,
                device: DeviceId(d)
            }),
            (s, s).prop_map(|(user, password)| Request::DeleteAccount { user, password }),
            any::<u64>().prop_map(|since| Request::Revocations { since }),
            Just(Request::Devices {
                certificate: cert(),
                proof: [3; 64],
                dh_proof: [4; 32],
            }),
            Just(Request::GetBuddyList {
                certificate: cert(),
                proof: [3; 64],
                dh_proof: [4; 32],
            }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..2000),
                proptest::collection::vec(any::<u8>(), 0..MAX_BUDDY_ENVELOPE)
            )
                .prop_map(|(base, version, backup, envelope)| Request::PutBuddyList {
                    certificate: cert(),
                    proof: [3; 64],
                    dh_proof: [4; 32],
                    base,
                    version,
                    backup,
                    envelope,
                }),
            (s, "\\PC{0,300}", any::<bool>())
                .prop_filter("a note fits", |(_, n, _)| n.len() <= MAX_REQUEST_NOTE)
                .prop_map(|(to, note, accepting)| Request::SendContactRequest {
                    certificate: cert(),
                    proof: [5; 64],
                    dh_proof: [6; 32],
                    to,
                    note,
                    accepting,
                }),
            Just(Request::GetContactRequests {
                certificate: cert(),
                proof: [3; 64],
                dh_proof: [4; 32],
            }),
            proptest::collection::vec(any::<u64>(), 0..=MAX_REQUESTS_LISTED).prop_map(|ids| {
                Request::DeleteContactRequests {
                    certificate: cert(),
                    proof: [3; 64],
                    dh_proof: [4; 32],
                    ids,
                }
            }),
        ]
    }

    fn responses() -> impl Strategy<Value = Response> {
        prop_oneof![
            (0u8..3, any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(
                |(k, challenge, server_key)| Response::Hello {
                    status: match k {
                        0 => VersionStatus::Ok,
                        1 => VersionStatus::UpgradeRecommended {
                            latest: Version::new(1, 2, 3)
                        },
                        _ => VersionStatus::UpgradeRequired {
                            minimum: Version::new(2, 0, 0)
                        },
                    },
                    challenge,
                    server_key,
                }
            ),
            Just(Response::Registered),
            Just(Response::Certified {
                certificate: cert()
            }),
            Just(Response::Done),
            (any::<u64>(), 0usize..50, any::<bool>()).prop_map(|(since, n, complete)| {
                Response::Revocations(RevocationPage {
                    since,
                    entries: (0..n)
                        .map(|i| RevokedDevice {
                            serial: since.wrapping_add(i as u64),
                            device: DeviceId([i as u8; 16]),
                            revoked_at: UnixTime(i as u64),
                        })
                        .collect(),
                    complete,
                    issued_at: UnixTime(5),
                    signature: [3; 64],
                })
            }),
            any::<u32>().prop_map(|s| Response::Error(LoginError::Throttled {
                retry_after_secs: s
            })),
            Just(Response::Error(LoginError::WrongPassword)),
            Just(Response::Error(LoginError::RenewalExpired)),
            Just(Response::Error(LoginError::VersionConflict)),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..2000),
                proptest::collection::vec(any::<u8>(), 0..MAX_BUDDY_ENVELOPE)
            )
                .prop_map(|(version, backup, envelope)| Response::BuddyList {
                    version,
                    backup,
                    envelope,
                }),
            proptest::collection::vec(
                (any::<[u8; 16]>(), any::<u64>(), 1u64..),
                0..MAX_DEVICES_LISTED
            )
            .prop_map(|v| Response::Devices(
                v.into_iter()
                    .map(|(d, t, r)| DeviceSummary {
                        device: DeviceId(d),
                        first_seen: UnixTime(t),
                        last_seen: UnixTime(t),
                        revoked_at: (r % 2 == 0).then_some(UnixTime(r)),
                    })
                    .collect()
            )),
            proptest::collection::vec(
                (
                    any::<u64>(),
                    "[a-z][a-z0-9._-]{2,31}",
                    "\\PC{0,200}",
                    any::<u64>(),
                    any::<bool>()
                ),
                0..=MAX_REQUESTS_LISTED
            )
            .prop_map(|v| Response::ContactRequests(
                v.into_iter()
                    .map(|(id, from, note, at, accepting)| ContactRequest {
                        id,
                        from: UserName::parse(&from).unwrap(),
                        note,
                        sent_at: UnixTime(at),
                        accepting,
                    })
                    .collect()
            )),
        ]
    }

    #[test]
    fn the_longest_list_of_contact_requests_fits_a_frame() {
        let full = ContactRequest {
            id: u64::MAX,
            from: UserName::parse(&"a".repeat(UserName::MAX_LEN)).unwrap(),
            note: "é".repeat(MAX_REQUEST_NOTE / 2),
            sent_at: UnixTime(u64::MAX),
            accepting: true,
        };
        let mut b = BytesMut::new();
        Response::ContactRequests(vec![full; MAX_REQUESTS_LISTED]).encode(&mut b);
        assert!(b.len() <= usize::from(u16::MAX), "{} bytes", b.len());
        let mut b = BytesMut::new();
        Request::SendContactRequest {
            certificate: cert(),
            proof: [0; 64],
            dh_proof: [0; 32],
            to: "bob".into(),
            note: "x".repeat(MAX_REQUEST_NOTE + 1),
            accepting: false,
        }
        .encode(&mut b);
        // Cut at the limit when encoded: the decoder takes what the encoder writes.
        assert!(matches!(
            Request::decode(&b),
            Ok(Request::SendContactRequest { note, .. }) if note.len() == MAX_REQUEST_NOTE
        ));
    }

    proptest! {
        #[test]
        fn request_roundtrip(req in requests()) {
            let mut b = BytesMut::new();
            req.encode(&mut b);
            assert_eq!(Request::decode(&b).unwrap(), req);
        }

        #[test]
        fn response_roundtrip(resp in responses()) {
            let mut b = BytesMut::new();
            resp.encode(&mut b);
            assert_eq!(Response::decode(&b).unwrap(), resp);
        }

        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Request::decode(&data);
            let _ = Response::decode(&data);
        }
    }

    #[test]
    fn passwords_never_appear_in_debug_output() {
        let r = Request::Login {
            user: "alice".into(),
            password: "hunter2-secret".into(),
            device: DeviceKeys {
                signing_public: [0; 32],
                dh_public: [0; 32],
                proof: [0; 64],
                dh_proof: [0; 32],
            },
        };
        assert!(!format!("{r:?}").contains("hunter2"));
        let r = Request::ChangePassword {
            user: "alice".into(),
            old: "old-secret".into(),
            new: "new-secret".into(),
            keep_only: None,
        };
        assert!(!format!("{r:?}").contains("secret"));
    }

    #[test]
    fn versions() {
        assert_eq!(Version::parse("1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(Version::parse("1.2"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 9));
    }
}
