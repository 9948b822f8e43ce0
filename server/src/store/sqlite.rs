//! [`SqliteStore`]: the embedded account store, one SQLite file in the server's data directory.
//!
//! The file is created owner-only (mode 0600: it holds password hashes) and runs in WAL mode
//! with `synchronous=NORMAL` (a power cut may lose the last few commits, never corrupt the
//! file), foreign keys on and a busy timeout, so several handles, even in several processes,
//! may share one file. Every write runs in a `BEGIN IMMEDIATE` transaction, which takes the
//! database's write lock up front: writers queue behind the busy timeout instead of failing
//! with `SQLITE_BUSY` when they upgrade a read lock.
//!
//! Schema (version 1):
//!
//! - `accounts(user TEXT PRIMARY KEY, password_hash, created_at)`;
//! - `devices(device BLOB PRIMARY KEY, user REFERENCES accounts ON DELETE CASCADE,
//!   signing_public, dh_public UNIQUE, first_seen, last_seen, revoked_at NULL)`: one X25519
//!   key is certified for one device only, across the whole database and for good (a revoked
//!   device keeps its key);
//! - `revocations(serial INTEGER PRIMARY KEY AUTOINCREMENT, device, user, revoked_at)`, with
//!   no foreign key, so the revocation list outlives deleted accounts. `AUTOINCREMENT` makes
//!   SQLite never reuse a serial, even after the newest rows are gone.
//!
//! Times are stored as SQLite integers (signed 64 bits); a time past `i64::MAX` is refused
//! with [`StoreError::Backend`].

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use natter_core::crypto::{DeviceId, UnixTime, UserName};
use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};

use natter_core::login::proto::{MAX_REQUESTS_SENT, MAX_REQUESTS_WAITING, REQUEST_LIFETIME_SECS};

use super::{
    sql_version, AccountRecord, AccountStore, ContactRequest, DeviceRecord, RequestAdded,
    Revocation, StoreError, StoredBuddyList,
};

/// The schema version this code writes and understands.
const SCHEMA_VERSION: i64 = 3;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    user          TEXT    PRIMARY KEY NOT NULL CHECK (user = lower(user)),
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device         BLOB    PRIMARY KEY NOT NULL CHECK (length(device) = 16),
    user           TEXT    NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    signing_public BLOB    NOT NULL CHECK (length(signing_public) = 32),
    dh_public      BLOB    NOT NULL CHECK (length(dh_public) = 32),
    first_seen     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    revoked_at     INTEGER
);
CREATE INDEX IF NOT EXISTS devices_by_user ON devices (user, first_seen);
CREATE UNIQUE INDEX IF NOT EXISTS devices_by_dh_public ON devices (dh_public);
CREATE TABLE IF NOT EXISTS revocations (
    serial     INTEGER PRIMARY KEY AUTOINCREMENT,
    device     BLOB    NOT NULL,
    user       TEXT    NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_by_device ON revocations (device, serial);
CREATE TABLE IF NOT EXISTS buddy_lists (
    user     TEXT    PRIMARY KEY NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    version  INTEGER NOT NULL CHECK (version > 0),
    backup   BLOB    NOT NULL,
    envelope BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS contact_requests (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT    NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    sender    TEXT    NOT NULL REFERENCES accounts (user) ON DELETE CASCADE,
    note      TEXT    NOT NULL,
    accepting INTEGER NOT NULL,
    sent_at   INTEGER NOT NULL,
    UNIQUE (recipient, sender)
);
CREATE INDEX IF NOT EXISTS contact_requests_by_sender ON contact_requests (sender);
";

const DEVICE_COLUMNS: &str =
    "user, device, signing_public, dh_public, first_seen, last_seen, revoked_at";

/// An [`AccountStore`] in one SQLite file.
///
/// One connection behind a mutex: calls from several threads are serialised within one
/// handle, and several handles (or processes) on the same file coordinate through SQLite's
/// own locking.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open the store at `path`, creating the file (mode 0600) and the schema if absent.
    ///
    /// The parent directory must exist. An existing file keeps its permissions.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file cannot be created or opened, is not a SQLite
    /// database, or has a schema newer than this code understands.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the file ourselves so it is owner-only from its first byte; SQLite would use
        // 0644 (less the umask). Its -wal and -shm files copy the main file's permissions.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::Backend(format!("creating database file: {e}"))),
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot switch the database to WAL mode (journal_mode is {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(backend)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        tx.execute_batch(SCHEMA).map_err(backend)?;
        let version: Option<i64> = tx
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(backend)?;
        match version {
            None => {
                tx.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(backend)?;
            }
            Some(SCHEMA_VERSION) => {}
            // Version 2 added the buddy_lists table, version 3 contact_requests: the schema
            // above creates them.
            Some(1 | 2) => {
                tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
                    .map_err(backend)?;
            }
            Some(v) => {
                return Err(StoreError::Backend(format!(
                "database schema version {v} is not supported (this server knows {SCHEMA_VERSION})"
            )))
            }
        }
        tx.commit().map_err(backend)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held rolled its transaction back (Transaction's drop),
        // so the connection is still usable.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A driver error as [`StoreError::Backend`]: SQLite's own message (which names tables,
/// columns and constraints, never bound values), nothing else.
fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

/// A device write's error: [`StoreError::KeyInUse`] when another device holds the X25519 key.
fn key_in_use(e: rusqlite::Error) -> StoreError {
    if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) {
        StoreError::KeyInUse
    } else {
        backend(e)
    }
}

fn is_constraint(e: &rusqlite::Error, extended: i32) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation && f.extended_code == extended)
}

/// [`StoreError::NoSuchAccount`] unless `user` has an account (read within `tx`).
fn require_account(tx: &rusqlite::Transaction<'_>, user: &UserName) -> Result<(), StoreError> {
    tx.query_row(
        "SELECT 1 FROM accounts WHERE user = ?1",
        [user.as_str()],
        |_| Ok(()),
    )
    .optional()
    .map_err(backend)?
    .ok_or(StoreError::NoSuchAccount)
}

fn to_sql_time(t: UnixTime) -> Result<i64, StoreError> {
    i64::try_from(t.0).map_err(|_| StoreError::Backend("time out of range".into()))
}

fn from_sql_time(t: i64) -> rusqlite::Result<UnixTime> {
    u64::try_from(t)
        .map(UnixTime)
        .map_err(|_| corrupt("negative time"))
}

fn corrupt(what: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Null,
        format!("corrupt row: {what}").into(),
    )
}

fn user_col(row: &Row<'_>, idx: usize) -> rusqlite::Result<UserName> {
    let s: String = row.get(idx)?;
    UserName::parse(&s).map_err(|_| corrupt("invalid user name"))
}

fn bytes_col<const N: usize>(row: &Row<'_>, idx: usize) -> rusqlite::Result<[u8; N]> {
    let v: Vec<u8> = row.get(idx)?;
    v.try_into()
        .map_err(|_| corrupt("key or id of the wrong length"))
}

fn device_row(row: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        user: user_col(row, 0)?,
        device: DeviceId(bytes_col(row, 1)?),
        signing_public: bytes_col(row, 2)?,
        dh_public: bytes_col(row, 3)?,
        first_seen: from_sql_time(row.get(4)?)?,
        last_seen: from_sql_time(row.get(5)?)?,
        revoked_at: row
            .get::<_, Option<i64>>(6)?
            .map(from_sql_time)
            .transpose()?,
    })
}

fn serial_from_sql(s: i64) -> Result<u64, StoreError> {
    u64::try_from(s).map_err(|_| StoreError::Backend("corrupt row: negative serial".into()))
}

impl AccountStore for SqliteStore {
    fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError> {
        let created = to_sql_time(account.created_at)?;
        let conn = self.conn();
        match conn.execute(
            "INSERT INTO accounts (user, password_hash, created_at) VALUES (?1, ?2, ?3)",
            params![account.user.as_str(), account.password_hash, created],
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Err(StoreError::NameTaken)
            }
            Err(e) => Err(backend(e)),
        }
    }

    fn account(&self, user: &UserName) -> Result<Option<AccountRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT password_hash, created_at FROM accounts WHERE user = ?1",
                [user.as_str()],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(backend)?;
        row.map(|(password_hash, created_at)| {
            Ok(AccountRecord {
                user: user.clone(),
                password_hash,
                created_at: from_sql_time(created_at).map_err(backend)?,
            })
        })
        .transpose()
    }

    fn set_password_hash(&self, user: &UserName, hash: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .execute(
                "UPDATE accounts SET password_hash = ?1 WHERE user = ?2",
                params![hash, user.as_str()],
            )
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::NoSuchAccount);
        }
        Ok(())
    }

    fn delete_account(&self, user: &UserName, now: UnixTime) -> Result<(), StoreError> {
        let now = to_sql_time(now)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        require_account(&tx, user)?;
        tx.execute(
            "INSERT INTO revocations (device, user, revoked_at)
             SELECT device, user, ?2 FROM devices
             WHERE user = ?1 AND revoked_at IS NULL
             ORDER BY first_seen, device",
            params![user.as_str(), now],
        )
        .map_err(backend)?;
        // The devices go with the account (ON DELETE CASCADE).
        tx.execute("DELETE FROM accounts WHERE user = ?1", [user.as_str()])
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn upsert_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        let first_seen = to_sql_time(device.first_seen)?;
        let last_seen = to_sql_time(device.last_seen)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        require_account(&tx, &device.user)?;
        let owner: Option<String> = tx
            .query_row(
                "SELECT user FROM devices WHERE device = ?1",
                [&device.device.0[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        match owner {
            Some(owner) if owner != device.user.as_str() => {
                return Err(StoreError::DeviceOwnedElsewhere)
            }
            Some(_) => {
                tx.execute(
                    "UPDATE devices SET signing_public = ?2, dh_public = ?3, last_seen = ?4
                     WHERE device = ?1",
                    params![
                        &device.device.0[..],
                        &device.signing_public[..],
                        &device.dh_public[..],
                        last_seen
                    ],
                )
                .map_err(key_in_use)?;
            }
            None => {
                // `revoked_at` is not taken from the record: only `revoke_device` revokes,
                // so every revoked device is on the revocation list.
                tx.execute(
                    "INSERT INTO devices
                     (device, user, signing_public, dh_public, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        &device.device.0[..],
                        device.user.as_str(),
                        &device.signing_public[..],
                        &device.dh_public[..],
                        first_seen,
                        last_seen
                    ],
                )
                .map_err(key_in_use)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let conn = self.conn();
        conn.query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device = ?1"),
            [&device.0[..]],
            device_row,
        )
        .optional()
        .map_err(backend)
    }

    fn devices(&self, user: &UserName) -> Result<Vec<DeviceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {DEVICE_COLUMNS} FROM devices WHERE user = ?1 ORDER BY first_seen, device"
            ))
            .map_err(backend)?;
        let rows = stmt
            .query_map([user.as_str()], device_row)
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
    }

    fn revoke_device(
        &self,
        user: &UserName,
        device: &DeviceId,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let now = to_sql_time(now)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let revoked_at: Option<Option<i64>> = tx
            .query_row(
                "SELECT revoked_at FROM devices WHERE device = ?1 AND user = ?2",
                params![&device.0[..], user.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let serial: i64 = match revoked_at {
            None => return Err(StoreError::NoSuchDevice),
            // Already revoked: the newest revocation of this id is this device's (a device row
            // is revoked at most once, and a revocation is only ever appended for a live row).
            Some(Some(_)) => tx
                .query_row(
                    "SELECT max(serial) FROM revocations WHERE device = ?1",
                    [&device.0[..]],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .map_err(backend)?
                .ok_or_else(|| {
                    StoreError::Backend("revoked device missing from the revocation list".into())
                })?,
            Some(None) => {
                let serial = tx
                    .query_row(
                        "INSERT INTO revocations (device, user, revoked_at) VALUES (?1, ?2, ?3)
                         RETURNING serial",
                        params![&device.0[..], user.as_str(), now],
                        |r| r.get(0),
                    )
                    .map_err(backend)?;
                tx.execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE device = ?1",
                    params![&device.0[..], now],
                )
                .map_err(backend)?;
                serial
            }
        };
        tx.commit().map_err(backend)?;
        serial_from_sql(serial)
    }

    fn revocations_since(&self, since: u64, limit: usize) -> Result<Vec<Revocation>, StoreError> {
        let Ok(since) = i64::try_from(since) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT serial, device, user, revoked_at FROM revocations
                 WHERE serial > ?1 ORDER BY serial LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map([since, limit], |r| {
                Ok(Revocation {
                    serial: u64::try_from(r.get::<_, i64>(0)?)
                        .map_err(|_| corrupt("negative serial"))?,
                    device: DeviceId(bytes_col(r, 1)?),
                    user: user_col(r, 2)?,
                    revoked_at: from_sql_time(r.get(3)?)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
    }

    fn buddy_list(&self, user: &UserName) -> Result<Option<StoredBuddyList>, StoreError> {
        let row: Option<(i64, Vec<u8>, Vec<u8>)> = self
            .conn()
            .query_row(
                "SELECT version, backup, envelope FROM buddy_lists WHERE user = ?1",
                [user.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(backend)?;
        Ok(row.map(|(version, backup, envelope)| StoredBuddyList {
            version: version.max(0) as u64,
            backup,
            envelope,
        }))
    }

    fn put_buddy_list(
        &self,
        user: &UserName,
        base: u64,
        list: &StoredBuddyList,
    ) -> Result<bool, StoreError> {
        let (base, version) = (sql_version(base)?, sql_version(list.version)?);
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        require_account(&tx, user)?;
        let stored: Option<i64> = tx
            .query_row(
                "SELECT version FROM buddy_lists WHERE user = ?1",
                [user.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        if stored.unwrap_or(0) != base {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO buddy_lists (user, version, backup, envelope) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user) DO UPDATE SET version = excluded.version,
                 backup = excluded.backup,
                 envelope = CASE WHEN length(excluded.envelope) = 0
                     THEN buddy_lists.envelope ELSE excluded.envelope END",
            params![user.as_str(), version, &list.backup, &list.envelope],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(true)
    }

    fn add_contact_request(
        &self,
        from: &UserName,
        to: &UserName,
        note: &str,
        accepting: bool,
        at: UnixTime,
    ) -> Result<RequestAdded, StoreError> {
        let at = to_sql_time(at)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        require_account(&tx, from)?;
        match require_account(&tx, to) {
            Err(StoreError::NoSuchAccount) => return Ok(RequestAdded::NoSuchRecipient),
            other => other?,
        }
        // Requests nobody answered within their lifetime leave, freeing both limits.
        tx.execute(
            "DELETE FROM contact_requests WHERE (sender = ?1 OR recipient = ?2) AND sent_at < ?3",
            params![
                from.as_str(),
                to.as_str(),
                at - REQUEST_LIFETIME_SECS as i64
            ],
        )
        .map_err(backend)?;
        let count = |sql: &str, user: &UserName| -> Result<usize, StoreError> {
            tx.query_row(sql, [user.as_str()], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as usize)
                .map_err(backend)
        };
        let again: bool = tx
            .query_row(
                "SELECT 1 FROM contact_requests WHERE recipient = ?1 AND sender = ?2",
                [to.as_str(), from.as_str()],
                |_| Ok(()),
            )
            .optional()
            .map_err(backend)?
            .is_some();
        if !again {
            if count(
                "SELECT count(*) FROM contact_requests WHERE sender = ?1",
                from,
            )? >= MAX_REQUESTS_SENT
            {
                return Ok(RequestAdded::SenderLimit);
            }
            if count(
                "SELECT count(*) FROM contact_requests WHERE recipient = ?1",
                to,
            )? >= MAX_REQUESTS_WAITING
            {
                return Ok(RequestAdded::RecipientFull);
            }
        }
        tx.execute(
            "INSERT INTO contact_requests (recipient, sender, note, accepting, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (recipient, sender) DO UPDATE SET note = excluded.note,
                 accepting = excluded.accepting, sent_at = excluded.sent_at",
            params![to.as_str(), from.as_str(), note, accepting, at],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(RequestAdded::Stored)
    }

    fn contact_requests(
        &self,
        user: &UserName,
        limit: usize,
    ) -> Result<Vec<ContactRequest>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, sender, note, sent_at, accepting FROM contact_requests
                 WHERE recipient = ?1 ORDER BY id LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![user.as_str(), limit as i64], |r| {
                Ok(ContactRequest {
                    id: u64::try_from(r.get::<_, i64>(0)?).map_err(|_| corrupt("negative id"))?,
                    from: user_col(r, 1)?,
                    note: r.get(2)?,
                    sent_at: from_sql_time(r.get(3)?)?,
                    accepting: r.get(4)?,
                })
            })
            .map_err(backend)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
    }

    fn delete_contact_requests(&self, user: &UserName, ids: &[u64]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        for id in ids {
            let Ok(id) = i64::try_from(*id) else { continue };
            tx.execute(
                "DELETE FROM contact_requests WHERE id = ?1 AND recipient = ?2",
                params![id, user.as_str()],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_file_is_owner_only_and_in_wal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("accounts.db");
        let store = SqliteStore::open(&path).expect("open");
        let user = UserName::parse("alice").expect("name");
        store
            .create_account(&AccountRecord {
                user,
                password_hash: "$argon2id$x".into(),
                created_at: UnixTime(1),
            })
            .expect("create");
        for name in ["accounts.db", "accounts.db-wal", "accounts.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let conn = store.conn();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .expect("foreign_keys");
        assert_eq!(fk, 1);
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .expect("synchronous");
        assert_eq!(sync, 1, "NORMAL");
    }

    #[test]
    fn a_version_1_database_gains_the_buddy_lists_and_contact_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("accounts.db");
        drop(SqliteStore::open(&path).expect("open"));
        // As the previous release left it.
        let conn = Connection::open(&path).expect("raw open");
        conn.execute_batch(
            "DROP TABLE buddy_lists; DROP TABLE contact_requests;
             UPDATE schema_version SET version = 1;",
        )
        .expect("downgrade");
        drop(conn);
        let store = SqliteStore::open(&path).expect("migrate");
        let version: i64 = store
            .conn()
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let user = UserName::parse("alice").unwrap();
        assert_eq!(store.buddy_list(&user).expect("read"), None);
        assert_eq!(store.contact_requests(&user, 10).expect("read"), vec![]);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("accounts.db");
        drop(SqliteStore::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("raw open");
        conn.execute("UPDATE schema_version SET version = 99", [])
            .expect("bump");
        drop(conn);
        match SqliteStore::open(&path) {
            Err(StoreError::Backend(m)) => assert!(m.contains("99"), "{m}"),
            other => panic!("expected a schema version error, got {other:?}"),
        }
    }
}
