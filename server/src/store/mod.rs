//! Account storage for the login server: the [`AccountStore`] trait and its two real
//! implementations, SQLite ([`sqlite::SqliteStore`], the embedded default: one file in the
//! server's data directory, WAL mode) and PostgreSQL ([`postgres::PostgresStore`], for
//! operators who run several login servers behind one name).
//!
//! Every method is a short, blocking call; the login server runs them on worker threads, never
//! on its I/O thread. Uniqueness of user names is enforced by the database itself (a unique
//! key on the canonical lower-case name), so two login servers sharing one PostgreSQL database
//! can never create the same account twice.

use natter_core::crypto::{DeviceId, UnixTime, UserName};
pub use natter_core::login::proto::ContactRequest;

pub mod postgres;
pub mod sqlite;

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// The canonical (lower-case) user name; unique.
    pub user: UserName,
    /// The Argon2id hash in PHC string format (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`),
    /// which carries its own parameters so they can be raised later.
    pub password_hash: String,
    /// When the account was created.
    pub created_at: UnixTime,
}

/// An account's buddy-list backup and its key's envelope, as stored: opaque bytes the server
/// never reads (`natter_core::contacts`), with the version the writer gave them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoredBuddyList {
    /// The backup's version (above every earlier one; at most `i64::MAX`).
    pub version: u64,
    /// The sealed backup.
    pub backup: Vec<u8>,
    /// The list key's envelope (empty in an update: keep the stored one).
    pub envelope: Vec<u8>,
}

/// A device of an account, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The owning account.
    pub user: UserName,
    /// The device id (derived from `signing_public`).
    pub device: DeviceId,
    /// Ed25519 public key.
    pub signing_public: [u8; 32],
    /// X25519 public key.
    pub dh_public: [u8; 32],
    /// First certified.
    pub first_seen: UnixTime,
    /// Last certified (login or renewal).
    pub last_seen: UnixTime,
    /// When revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// One entry of the revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Strictly increasing over the whole store (the list is fetched by "since serial").
    pub serial: u64,
    /// The revoked device.
    pub device: DeviceId,
    /// Its account at the time.
    pub user: UserName,
    /// When.
    pub revoked_at: UnixTime,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The user name is taken (case-insensitively).
    #[error("user name is taken")]
    NameTaken,
    /// No such account.
    #[error("no such account")]
    NoSuchAccount,
    /// No such device for that account.
    #[error("no such device")]
    NoSuchDevice,
    /// The device id is registered to another account.
    #[error("device belongs to another account")]
    DeviceOwnedElsewhere,
    /// Another device (of any account, revoked or not) holds that X25519 key.
    #[error("the device key is certified for another device")]
    KeyInUse,
    /// The database failed (connection, I/O, corruption). The message never contains a
    /// password or a password hash.
    #[error("storage failure: {0}")]
    Backend(String),
}

/// Where accounts, devices and revocations live.
///
/// Implementations must be safe to call from several threads at once and must make every
/// method atomic (a crash mid-call leaves the old state or the new one).
pub trait AccountStore: Send + Sync {
    /// Create an account. [`StoreError::NameTaken`] if the canonical name exists, atomically
    /// even across several login servers sharing the database.
    fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError>;

    /// Look an account up by canonical name.
    fn account(&self, user: &UserName) -> Result<Option<AccountRecord>, StoreError>;

    /// Replace the password hash. [`StoreError::NoSuchAccount`] if absent.
    fn set_password_hash(&self, user: &UserName, hash: &str) -> Result<(), StoreError>;

    /// Delete the account: every device it has that is not revoked yet is revoked (so its
    /// certificates cannot be renewed and appear in the revocation list), then the account
    /// and its devices are removed, and the name becomes free again.
    /// [`StoreError::NoSuchAccount`] if absent.
    fn delete_account(&self, user: &UserName, now: UnixTime) -> Result<(), StoreError>;

    /// Record a certified device: insert it, or update `last_seen` (and keys, which never
    /// change for a device id since the id derives from the signing key). Errors:
    /// [`StoreError::NoSuchAccount`], [`StoreError::DeviceOwnedElsewhere`],
    /// [`StoreError::KeyInUse`] (another device, of any account, has that `dh_public`).
    /// Does not clear `revoked_at`: a revoked device stays revoked.
    fn upsert_device(&self, device: &DeviceRecord) -> Result<(), StoreError>;

    /// A device by id.
    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;

    /// Every device of an account (revoked ones included), in `first_seen` order.
    fn devices(&self, user: &UserName) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Revoke a device of `user` and append it to the revocation list, returning its serial.
    /// Revoking an already revoked device returns its existing serial.
    /// Errors: [`StoreError::NoSuchDevice`] (also when it belongs to another account).
    fn revoke_device(
        &self,
        user: &UserName,
        device: &DeviceId,
        now: UnixTime,
    ) -> Result<u64, StoreError>;

    /// Revocations with `serial > since`, oldest first, at most `limit`.
    fn revocations_since(&self, since: u64, limit: usize) -> Result<Vec<Revocation>, StoreError>;

    /// The account's buddy-list backup, if one is stored (it goes with the account).
    fn buddy_list(&self, user: &UserName) -> Result<Option<StoredBuddyList>, StoreError>;

    /// Store `list` for `user` in place of version `base` (0: none stored yet), atomically
    /// even across login servers sharing the database: `false`, and nothing changes, when
    /// the stored version is not `base`. An empty envelope keeps the stored one.
    /// [`StoreError::NoSuchAccount`] if absent.
    fn put_buddy_list(
        &self,
        user: &UserName,
        base: u64,
        list: &StoredBuddyList,
    ) -> Result<bool, StoreError>;

    /// Leave a contact request from `from` for `to` (`accepting`: the answer to theirs),
    /// atomically within the limits
    /// (`natter_core::login::proto::MAX_REQUESTS_SENT` waiting per sender,
    /// `MAX_REQUESTS_WAITING` per recipient); a second request to the same user replaces the
    /// first's note and time, keeping its id. [`StoreError::NoSuchAccount`] if `from` is
    /// absent.
    fn add_contact_request(
        &self,
        from: &UserName,
        to: &UserName,
        note: &str,
        accepting: bool,
        at: UnixTime,
    ) -> Result<RequestAdded, StoreError>;

    /// The contact requests waiting for `user`, oldest first, at most `limit`.
    fn contact_requests(
        &self,
        user: &UserName,
        limit: usize,
    ) -> Result<Vec<ContactRequest>, StoreError>;

    /// Delete contact requests waiting for `user` (ids of other users' requests, or unknown
    /// ones, change nothing).
    fn delete_contact_requests(&self, user: &UserName, ids: &[u64]) -> Result<(), StoreError>;
}

/// What became of a contact request left with [`AccountStore::add_contact_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAdded {
    /// Stored (or, for a second request to the same user, its note and time replaced).
    Stored,
    /// The recipient has no account.
    NoSuchRecipient,
    /// The sender has `MAX_REQUESTS_SENT` requests waiting at others.
    SenderLimit,
    /// The recipient has `MAX_REQUESTS_WAITING` requests waiting.
    RecipientFull,
}

/// A version as the databases store it (a signed 64-bit integer).
fn sql_version(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Backend(format!("version {v} out of range")))
}
