//! [`PostgresStore`]: the account store in PostgreSQL, for several login servers sharing one
//! database.
//!
//! The connection is made **without TLS** (`NoTls`): the database must be on loopback or on a
//! private network that only the login servers and the database reach. Put it behind a TLS
//! tunnel, or add a TLS connector here, before connecting over anything else.
//!
//! Correctness across servers rests on the database:
//!
//! - user names are the primary key of `accounts`, so of two servers registering the same
//!   name at once exactly one succeeds, the other getting SQLSTATE 23505
//!   (`unique_violation`), reported as [`StoreError::NameTaken`];
//! - revocation serials come from an identity column, and every transaction that appends to
//!   `revocations` first takes `LOCK TABLE revocations IN EXCLUSIVE MODE` (which still lets
//!   readers in). Serials are therefore committed in increasing order, and a reader paging
//!   with "since serial" can never see serial 11 before serial 10 is visible and skip 10
//!   for good, as it could with interleaved sequence allocations;
//! - every method that takes several locks takes them in one order: the account row, then
//!   the device row, then the revocation table, so concurrent calls never deadlock.
//!
//! The schema is created on connect if absent, under a transaction-scoped advisory lock so
//! that two servers starting at once do not race on `CREATE TABLE IF NOT EXISTS`.
//!
//! One connection behind a mutex. When the connection turns out to be broken (server restart,
//! idle connection killed by a firewall), the call reconnects and runs again, once. A write
//! whose connection died after the server committed it but before the answer arrived is
//! thereby run twice: harmless for the idempotent methods, recognised for
//! [`AccountStore::create_account`] (the account found is ours, same hash and time), and for
//! [`AccountStore::delete_account`] the second run may report
//! [`StoreError::NoSuchAccount`] although the first one deleted it.

use std::error::Error as _;
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::postgres::error::SqlState;
use ::postgres::{Client, Config, NoTls, Row};
use natter_core::crypto::{DeviceId, UnixTime, UserName};

use natter_core::login::proto::{MAX_REQUESTS_SENT, MAX_REQUESTS_WAITING, REQUEST_LIFETIME_SECS};

use super::{
    sql_version, AccountRecord, AccountStore, ContactRequest, DeviceRecord, RequestAdded,
    Revocation, StoreError, StoredBuddyList,
};

/// The schema version this code writes and understands.
const SCHEMA_VERSION: i32 = 3;

/// The `pg_advisory_xact_lock` key serialising schema creation and migration
/// (ASCII "natter" followed by 0x0001).
const SCHEMA_LOCK_KEY: i64 = 0x6e61_7474_6572_0001;

/// Used when the URL sets no `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `application_name` the connections show in `pg_stat_activity`.
const APPLICATION_NAME: &str = "natter-login";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS accounts (
    "user"        TEXT   PRIMARY KEY CHECK ("user" = lower("user")),
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device         BYTEA  PRIMARY KEY CHECK (octet_length(device) = 16),
    "user"         TEXT   NOT NULL REFERENCES accounts ("user") ON DELETE CASCADE,
    signing_public BYTEA  NOT NULL CHECK (octet_length(signing_public) = 32),
    dh_public      BYTEA  NOT NULL CHECK (octet_length(dh_public) = 32),
    first_seen     BIGINT NOT NULL,
    last_seen      BIGINT NOT NULL,
    revoked_at     BIGINT
);
CREATE INDEX IF NOT EXISTS devices_by_user ON devices ("user", first_seen);
CREATE UNIQUE INDEX IF NOT EXISTS devices_by_dh_public ON devices (dh_public);
CREATE TABLE IF NOT EXISTS revocations (
    serial     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device     BYTEA  NOT NULL,
    "user"     TEXT   NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_by_device ON revocations (device, serial);
CREATE TABLE IF NOT EXISTS buddy_lists (
    "user"   TEXT   PRIMARY KEY REFERENCES accounts ("user") ON DELETE CASCADE,
    version  BIGINT NOT NULL CHECK (version > 0),
    backup   BYTEA  NOT NULL,
    envelope BYTEA  NOT NULL
);
CREATE TABLE IF NOT EXISTS contact_requests (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient TEXT   NOT NULL REFERENCES accounts ("user") ON DELETE CASCADE,
    sender    TEXT   NOT NULL REFERENCES accounts ("user") ON DELETE CASCADE,
    note      TEXT   NOT NULL,
    accepting BOOLEAN NOT NULL,
    sent_at   BIGINT NOT NULL,
    UNIQUE (recipient, sender)
);
CREATE INDEX IF NOT EXISTS contact_requests_by_sender ON contact_requests (sender);
"#;

const DEVICE_COLUMNS: &str =
    r#""user", device, signing_public, dh_public, first_seen, last_seen, revoked_at"#;

/// An [`AccountStore`] in PostgreSQL.
///
/// Several login servers may share one database (and schema): user-name uniqueness, device
/// ownership and revocation serials are all enforced by the database.
pub struct PostgresStore {
    config: Config,
    schema: Option<String>,
    client: Mutex<Client>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the config: it may hold a password.
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed: an answer for the caller, or a driver error that may call for a
/// reconnection.
enum Fail {
    Store(StoreError),
    Pg(::postgres::Error),
}

impl From<::postgres::Error> for Fail {
    fn from(e: ::postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl Fail {
    fn into_store(self) -> StoreError {
        match self {
            Fail::Store(e) => e,
            Fail::Pg(e) => backend(&e),
        }
    }
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user@host:port/dbname`, or the
    /// `key=value` form) and create the schema in it if absent, in the connection's default
    /// `search_path` (normally `public`).
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the URL is malformed, the server cannot be reached or
    /// refuses the login, or the schema there is newer than this code understands.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_inner(url, None)
    }

    /// Like [`PostgresStore::connect`], but keep every table in the PostgreSQL schema
    /// `schema` (created if absent) by setting `search_path` on each connection.
    ///
    /// For tests (each test gets a fresh schema and they run in parallel on one database)
    /// and for multi-tenant setups (several independent user bases in one database).
    ///
    /// # Errors
    /// As [`PostgresStore::connect`]; also [`StoreError::Backend`] when `schema` is not
    /// 1 to 63 characters of `a-z`, `0-9` and `_` starting with a letter or `_`.
    pub fn connect_with_schema(url: &str, schema: &str) -> Result<Self, StoreError> {
        let valid = (1..=63).contains(&schema.len())
            && schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !schema.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(StoreError::Backend(
                "invalid schema name: use a-z, 0-9 and _, starting with a letter or _".into(),
            ));
        }
        Self::connect_inner(url, Some(schema.to_owned()))
    }

    fn connect_inner(url: &str, schema: Option<String>) -> Result<Self, StoreError> {
        let mut config: Config = url.parse().map_err(|e| backend(&e))?;
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client = open_client(&config, schema.as_deref()).map_err(|e| backend(&e))?;
        create_schema(&mut client, schema.as_deref())?;
        Ok(Self {
            config,
            schema,
            client: Mutex::new(client),
        })
    }

    /// Run `op` on the connection; when the connection turns out to be broken, reconnect and
    /// run it once more (`op`'s argument tells it whether this is that second run).
    fn run<T>(
        &self,
        mut op: impl FnMut(&mut Client, bool) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        let mut client = self.client();
        if client.is_closed() {
            // Known dead before anything was sent: reconnecting is free of ambiguity.
            *client = open_client(&self.config, self.schema.as_deref()).map_err(|e| backend(&e))?;
        }
        match op(&mut client, false) {
            Ok(t) => Ok(t),
            Err(Fail::Pg(e)) if is_broken(&e, &client) => {
                *client =
                    open_client(&self.config, self.schema.as_deref()).map_err(|e| backend(&e))?;
                op(&mut client, true).map_err(Fail::into_store)
            }
            Err(e) => Err(e.into_store()),
        }
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        // A panic while the lock was held dropped its transaction, which rolls it back.
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn open_client(config: &Config, schema: Option<&str>) -> Result<Client, ::postgres::Error> {
    let mut client = config.connect(NoTls)?;
    if let Some(schema) = schema {
        client.batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))?;
    }
    Ok(client)
}

fn create_schema(client: &mut Client, schema: Option<&str>) -> Result<(), StoreError> {
    let pg = |e: ::postgres::Error| backend(&e);
    let mut tx = client.transaction().map_err(pg)?;
    // Held until commit: a second server starting now waits here, then finds the tables.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK_KEY])
        .map_err(pg)?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(schema)
        ))
        .map_err(pg)?;
    }
    tx.batch_execute(SCHEMA).map_err(pg)?;
    let version: Option<i32> = tx
        .query_one("SELECT max(version) FROM schema_version", &[])
        .map_err(pg)?
        .get(0);
    match version {
        None => {
            tx.execute(
                "INSERT INTO schema_version (version) VALUES ($1)",
                &[&SCHEMA_VERSION],
            )
            .map_err(pg)?;
        }
        Some(SCHEMA_VERSION) => {}
        // Version 2 added the buddy_lists table, version 3 contact_requests: the schema above
        // creates them (still under the advisory lock).
        Some(1 | 2) => {
            tx.execute("UPDATE schema_version SET version = $1", &[&SCHEMA_VERSION])
                .map_err(pg)?;
        }
        Some(v) => {
            return Err(StoreError::Backend(format!(
                "database schema version {v} is not supported (this server knows {SCHEMA_VERSION})"
            )))
        }
    }
    tx.commit().map_err(pg)
}

/// A driver error as [`StoreError::Backend`]. For a server error, only its SQLSTATE and
/// primary message: never its DETAIL (which quotes row values: "Key (...)=(...) already
/// exists", "Failing row contains (...)", which could include a password hash) nor its
/// HINT. Other errors are the driver's own description and its cause (an I/O error, a
/// conversion error naming a column or a connection-string option), which hold no values.
fn backend(e: &::postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Backend(format!(
            "postgres {}: {}: {}",
            db.code().code(),
            db.severity(),
            db.message()
        )),
        None => match e.source() {
            Some(cause) => StoreError::Backend(format!("postgres: {e}: {cause}")),
            None => StoreError::Backend(format!("postgres: {e}")),
        },
    }
}

/// Whether `e` means the connection is gone, so that reconnecting may help.
fn is_broken(e: &::postgres::Error, client: &Client) -> bool {
    if e.is_closed() || client.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 08: connection exception; 57P01..57P03: admin shutdown, crash shutdown,
        // cannot connect now (the server is going down or restarting).
        let c = code.code();
        return c.starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    e.source().is_some_and(|s| s.is::<io::Error>())
}

fn to_sql_time(t: UnixTime) -> Result<i64, StoreError> {
    i64::try_from(t.0).map_err(|_| StoreError::Backend("time out of range".into()))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("corrupt row: {what}"))
}

fn from_sql_time(t: i64) -> Result<UnixTime, StoreError> {
    u64::try_from(t)
        .map(UnixTime)
        .map_err(|_| corrupt("negative time"))
}

fn user_from_sql(s: &str) -> Result<UserName, StoreError> {
    UserName::parse(s).map_err(|_| corrupt("invalid user name"))
}

fn bytes_from_sql<const N: usize>(v: &[u8]) -> Result<[u8; N], StoreError> {
    v.try_into()
        .map_err(|_| corrupt("key or id of the wrong length"))
}

fn serial_from_sql(s: i64) -> Result<u64, StoreError> {
    u64::try_from(s).map_err(|_| corrupt("negative serial"))
}

fn device_from_row(row: &Row) -> Result<DeviceRecord, Fail> {
    Ok(DeviceRecord {
        user: user_from_sql(row.try_get(0)?)?,
        device: DeviceId(bytes_from_sql(row.try_get(1)?)?),
        signing_public: bytes_from_sql(row.try_get(2)?)?,
        dh_public: bytes_from_sql(row.try_get(3)?)?,
        first_seen: from_sql_time(row.try_get(4)?)?,
        last_seen: from_sql_time(row.try_get(5)?)?,
        revoked_at: row
            .try_get::<_, Option<i64>>(6)?
            .map(from_sql_time)
            .transpose()?,
    })
}

/// Append to `revocations` in serial order: see the module documentation.
const LOCK_REVOCATIONS: &str = "LOCK TABLE revocations IN EXCLUSIVE MODE";

impl AccountStore for PostgresStore {
    fn create_account(&self, account: &AccountRecord) -> Result<(), StoreError> {
        let created = to_sql_time(account.created_at)?;
        self.run(|client, retry| {
            let inserted = client.execute(
                r#"INSERT INTO accounts ("user", password_hash, created_at) VALUES ($1, $2, $3)"#,
                &[&account.user.as_str(), &account.password_hash, &created],
            );
            match inserted {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    if retry {
                        // The first run may have committed before the connection broke: the
                        // hash carries a random salt, so finding our very record means it did.
                        let row = client.query_opt(
                            r#"SELECT password_hash, created_at FROM accounts WHERE "user" = $1"#,
                            &[&account.user.as_str()],
                        )?;
                        if let Some(row) = row {
                            let hash: &str = row.try_get(0)?;
                            let at: i64 = row.try_get(1)?;
                            if hash == account.password_hash && at == created {
                                return Ok(());
                            }
                        }
                    }
                    Err(StoreError::NameTaken.into())
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn account(&self, user: &UserName) -> Result<Option<AccountRecord>, StoreError> {
        self.run(|client, _| {
            let row = client.query_opt(
                r#"SELECT password_hash, created_at FROM accounts WHERE "user" = $1"#,
                &[&user.as_str()],
            )?;
            let Some(row) = row else {
                return Ok(None);
            };
            Ok(Some(AccountRecord {
                user: user.clone(),
                password_hash: row.try_get(0)?,
                created_at: from_sql_time(row.try_get(1)?)?,
            }))
        })
    }

    fn set_password_hash(&self, user: &UserName, hash: &str) -> Result<(), StoreError> {
        self.run(|client, _| {
            let n = client.execute(
                r#"UPDATE accounts SET password_hash = $1 WHERE "user" = $2"#,
                &[&hash, &user.as_str()],
            )?;
            if n == 0 {
                return Err(StoreError::NoSuchAccount.into());
            }
            Ok(())
        })
    }

    fn delete_account(&self, user: &UserName, now: UnixTime) -> Result<(), StoreError> {
        let now = to_sql_time(now)?;
        self.run(|client, _| {
            let mut tx = client.transaction()?;
            let locked = tx.query_opt(
                r#"SELECT 1 FROM accounts WHERE "user" = $1 FOR UPDATE"#,
                &[&user.as_str()],
            )?;
            if locked.is_none() {
                return Err(StoreError::NoSuchAccount.into());
            }
            tx.batch_execute(LOCK_REVOCATIONS)?;
            tx.execute(
                r#"INSERT INTO revocations (device, "user", revoked_at)
                   SELECT device, "user", $2 FROM devices
                   WHERE "user" = $1 AND revoked_at IS NULL
                   ORDER BY first_seen, device"#,
                &[&user.as_str(), &now],
            )?;
            // The devices go with the account (ON DELETE CASCADE).
            tx.execute(
                r#"DELETE FROM accounts WHERE "user" = $1"#,
                &[&user.as_str()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn upsert_device(&self, device: &DeviceRecord) -> Result<(), StoreError> {
        let first_seen = to_sql_time(device.first_seen)?;
        let last_seen = to_sql_time(device.last_seen)?;
        self.run(|client, _| {
            let mut tx = client.transaction()?;
            // Keeps the account from being deleted until we commit.
            let account = tx.query_opt(
                r#"SELECT 1 FROM accounts WHERE "user" = $1 FOR KEY SHARE"#,
                &[&device.user.as_str()],
            )?;
            if account.is_none() {
                return Err(StoreError::NoSuchAccount.into());
            }
            // `revoked_at` is not taken from the record: only `revoke_device` revokes, so
            // every revoked device is on the revocation list. A conflicting row owned by
            // another account is left alone and nothing is returned.
            let written = tx.query_opt(
                r#"INSERT INTO devices
                       (device, "user", signing_public, dh_public, first_seen, last_seen)
                   VALUES ($1, $2, $3, $4, $5, $6)
                   ON CONFLICT (device) DO UPDATE SET
                       signing_public = EXCLUDED.signing_public,
                       dh_public = EXCLUDED.dh_public,
                       last_seen = EXCLUDED.last_seen
                   WHERE devices."user" = EXCLUDED."user"
                   RETURNING 1"#,
                &[
                    &&device.device.0[..],
                    &device.user.as_str(),
                    &&device.signing_public[..],
                    &&device.dh_public[..],
                    &first_seen,
                    &last_seen,
                ],
            );
            match written {
                Ok(Some(_)) => {}
                Ok(None) => return Err(StoreError::DeviceOwnedElsewhere.into()),
                Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    return Err(StoreError::NoSuchAccount.into())
                }
                // The only other unique index on devices: another device's X25519 key.
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(StoreError::KeyInUse.into())
                }
                Err(e) => return Err(e.into()),
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn device(&self, device: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        self.run(|client, _| {
            let row = client.query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device = $1"),
                &[&&device.0[..]],
            )?;
            row.as_ref().map(device_from_row).transpose()
        })
    }

    fn devices(&self, user: &UserName) -> Result<Vec<DeviceRecord>, StoreError> {
        self.run(|client, _| {
            let rows = client.query(
                &format!(
                    r#"SELECT {DEVICE_COLUMNS} FROM devices WHERE "user" = $1
                       ORDER BY first_seen, device"#
                ),
                &[&user.as_str()],
            )?;
            rows.iter().map(device_from_row).collect()
        })
    }

    fn revoke_device(
        &self,
        user: &UserName,
        device: &DeviceId,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let now = to_sql_time(now)?;
        self.run(|client, _| {
            let mut tx = client.transaction()?;
            // Lock order: account, device, revocation table (as in delete_account).
            let account = tx.query_opt(
                r#"SELECT 1 FROM accounts WHERE "user" = $1 FOR KEY SHARE"#,
                &[&user.as_str()],
            )?;
            if account.is_none() {
                return Err(StoreError::NoSuchDevice.into());
            }
            let row = tx.query_opt(
                r#"SELECT revoked_at FROM devices WHERE device = $1 AND "user" = $2 FOR UPDATE"#,
                &[&&device.0[..], &user.as_str()],
            )?;
            let Some(row) = row else {
                return Err(StoreError::NoSuchDevice.into());
            };
            let revoked_at: Option<i64> = row.try_get(0)?;
            let serial: i64 = if revoked_at.is_some() {
                // The newest revocation of this id is this device's: a device row is revoked
                // at most once, and a revocation is only appended for a live row.
                let newest: Option<i64> = tx
                    .query_one(
                        "SELECT max(serial) FROM revocations WHERE device = $1",
                        &[&&device.0[..]],
                    )?
                    .try_get(0)?;
                newest.ok_or_else(|| {
                    StoreError::Backend("revoked device missing from the revocation list".into())
                })?
            } else {
                tx.batch_execute(LOCK_REVOCATIONS)?;
                let serial = tx
                    .query_one(
                        r#"INSERT INTO revocations (device, "user", revoked_at)
                           VALUES ($1, $2, $3) RETURNING serial"#,
                        &[&&device.0[..], &user.as_str(), &now],
                    )?
                    .try_get(0)?;
                tx.execute(
                    "UPDATE devices SET revoked_at = $2 WHERE device = $1",
                    &[&&device.0[..], &now],
                )?;
                serial
            };
            tx.commit()?;
            Ok(serial_from_sql(serial)?)
        })
    }

    fn revocations_since(&self, since: u64, limit: usize) -> Result<Vec<Revocation>, StoreError> {
        let Ok(since) = i64::try_from(since) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(|client, _| {
            let rows = client.query(
                r#"SELECT serial, device, "user", revoked_at FROM revocations
                   WHERE serial > $1 ORDER BY serial LIMIT $2"#,
                &[&since, &limit],
            )?;
            rows.iter()
                .map(|r| -> Result<Revocation, Fail> {
                    Ok(Revocation {
                        serial: serial_from_sql(r.try_get(0)?)?,
                        device: DeviceId(bytes_from_sql(r.try_get(1)?)?),
                        user: user_from_sql(r.try_get(2)?)?,
                        revoked_at: from_sql_time(r.try_get(3)?)?,
                    })
                })
                .collect()
        })
    }

    fn buddy_list(&self, user: &UserName) -> Result<Option<StoredBuddyList>, StoreError> {
        self.run(|client, _| {
            let row = client.query_opt(
                r#"SELECT version, backup, envelope FROM buddy_lists WHERE "user" = $1"#,
                &[&user.as_str()],
            )?;
            Ok(match row {
                None => None,
                Some(r) => Some(StoredBuddyList {
                    version: r.try_get::<_, i64>(0)?.max(0) as u64,
                    backup: r.try_get(1)?,
                    envelope: r.try_get(2)?,
                }),
            })
        })
    }

    fn put_buddy_list(
        &self,
        user: &UserName,
        base: u64,
        list: &StoredBuddyList,
    ) -> Result<bool, StoreError> {
        let (base, version) = (sql_version(base)?, sql_version(list.version)?);
        self.run(|client, retried| {
            let mut tx = client.transaction()?;
            // One update at a time per account, across login servers: the account's row is
            // the lock (and keeps the account from being deleted until we commit).
            let account = tx.query_opt(
                r#"SELECT 1 FROM accounts WHERE "user" = $1 FOR UPDATE"#,
                &[&user.as_str()],
            )?;
            if account.is_none() {
                return Err(StoreError::NoSuchAccount.into());
            }
            let stored: Option<i64> = tx
                .query_opt(
                    r#"SELECT version FROM buddy_lists WHERE "user" = $1"#,
                    &[&user.as_str()],
                )?
                .map(|r| r.try_get(0))
                .transpose()?;
            if stored.unwrap_or(0) != base {
                // On a retry after the connection broke, the first try may have committed:
                // then this very backup is what is stored.
                if retried && stored == Some(version) {
                    let same = tx.query_opt(
                        r#"SELECT 1 FROM buddy_lists WHERE "user" = $1 AND backup = $2"#,
                        &[&user.as_str(), &list.backup],
                    )?;
                    return Ok(same.is_some());
                }
                return Ok(false);
            }
            tx.execute(
                r#"INSERT INTO buddy_lists ("user", version, backup, envelope)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT ("user") DO UPDATE SET version = excluded.version,
                       backup = excluded.backup,
                       envelope = CASE WHEN octet_length(excluded.envelope) = 0
                           THEN buddy_lists.envelope ELSE excluded.envelope END"#,
                &[&user.as_str(), &version, &list.backup, &list.envelope],
            )?;
            tx.commit()?;
            Ok(true)
        })
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
        self.run(|client, _| {
            let mut tx = client.transaction()?;
            // The sender's row is the lock for its count, the recipient's for theirs (taken
            // in name order, so two requests between the same two users cannot deadlock).
            let found: Vec<String> = tx
                .query(
                    r#"SELECT "user" FROM accounts WHERE "user" = ANY($1)
                       ORDER BY "user" FOR UPDATE"#,
                    &[&vec![from.as_str(), to.as_str()]],
                )?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if !found.iter().any(|u| u == from.as_str()) {
                return Err(StoreError::NoSuchAccount.into());
            }
            if !found.iter().any(|u| u == to.as_str()) {
                return Ok(RequestAdded::NoSuchRecipient);
            }
            // Requests nobody answered within their lifetime leave, freeing both limits.
            tx.execute(
                "DELETE FROM contact_requests WHERE (sender = $1 OR recipient = $2)
                 AND sent_at < $3",
                &[
                    &from.as_str(),
                    &to.as_str(),
                    &(at - REQUEST_LIFETIME_SECS as i64),
                ],
            )?;
            let again = tx
                .query_opt(
                    "SELECT 1 FROM contact_requests WHERE recipient = $1 AND sender = $2",
                    &[&to.as_str(), &from.as_str()],
                )?
                .is_some();
            if !again {
                let count = |tx: &mut ::postgres::Transaction<'_>, sql: &str, u: &UserName| {
                    tx.query_one(sql, &[&u.as_str()])
                        .and_then(|r| r.try_get::<_, i64>(0))
                        .map(|n| n.max(0) as usize)
                };
                if count(
                    &mut tx,
                    "SELECT count(*) FROM contact_requests WHERE sender = $1",
                    from,
                )? >= MAX_REQUESTS_SENT
                {
                    return Ok(RequestAdded::SenderLimit);
                }
                if count(
                    &mut tx,
                    "SELECT count(*) FROM contact_requests WHERE recipient = $1",
                    to,
                )? >= MAX_REQUESTS_WAITING
                {
                    return Ok(RequestAdded::RecipientFull);
                }
            }
            tx.execute(
                "INSERT INTO contact_requests (recipient, sender, note, accepting, sent_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (recipient, sender) DO UPDATE SET note = excluded.note,
                     accepting = excluded.accepting, sent_at = excluded.sent_at",
                &[&to.as_str(), &from.as_str(), &note, &accepting, &at],
            )?;
            tx.commit()?;
            Ok(RequestAdded::Stored)
        })
    }

    fn contact_requests(
        &self,
        user: &UserName,
        limit: usize,
    ) -> Result<Vec<ContactRequest>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(|client, _| {
            client
                .query(
                    "SELECT id, sender, note, sent_at, accepting FROM contact_requests
                     WHERE recipient = $1 ORDER BY id LIMIT $2",
                    &[&user.as_str(), &limit],
                )?
                .iter()
                .map(|r| -> Result<ContactRequest, Fail> {
                    Ok(ContactRequest {
                        id: serial_from_sql(r.try_get(0)?)?,
                        from: user_from_sql(r.try_get(1)?)?,
                        note: r.try_get(2)?,
                        sent_at: from_sql_time(r.try_get(3)?)?,
                        accepting: r.try_get(4)?,
                    })
                })
                .collect()
        })
    }

    fn delete_contact_requests(&self, user: &UserName, ids: &[u64]) -> Result<(), StoreError> {
        let ids: Vec<i64> = ids.iter().filter_map(|i| i64::try_from(*i).ok()).collect();
        self.run(|client, _| {
            client.execute(
                "DELETE FROM contact_requests WHERE recipient = $1 AND id = ANY($2)",
                &[&user.as_str(), &ids],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    //! Tests that need the store's private connection. They run against the server named by
    //! `NATTER_TEST_POSTGRES`, like `tests/store.rs`.
    use super::*;

    fn url() -> Option<String> {
        match std::env::var("NATTER_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                assert!(
                    std::env::var("NATTER_REQUIRE_POSTGRES").as_deref() != Ok("1"),
                    "NATTER_REQUIRE_POSTGRES=1 but NATTER_TEST_POSTGRES is not set"
                );
                println!("SKIPPED: NATTER_TEST_POSTGRES not set (make test sets it)");
                None
            }
        }
    }

    fn fresh_schema(url: &str, name: &str) -> String {
        let schema = format!("unit_{name}_{}", std::process::id());
        let mut admin = Client::connect(url, NoTls).expect("connect");
        admin
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .expect("drop schema");
        schema
    }

    fn drop_schema(url: &str, schema: &str) {
        if let Ok(mut admin) = Client::connect(url, NoTls) {
            let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }

    #[test]
    fn a_version_1_schema_gains_the_buddy_lists_and_contact_requests() {
        let Some(url) = url() else { return };
        let schema = fresh_schema(&url, "migrate1");
        drop(PostgresStore::connect_with_schema(&url, &schema).expect("connect"));
        // As the previous release left it.
        let mut admin = Client::connect(&url, NoTls).expect("admin");
        admin
            .batch_execute(&format!(
                "DROP TABLE {schema}.buddy_lists; DROP TABLE {schema}.contact_requests;
                 UPDATE {schema}.schema_version SET version = 1"
            ))
            .expect("downgrade");
        let store = PostgresStore::connect_with_schema(&url, &schema).expect("migrate");
        let version: i32 = store
            .client()
            .query_one("SELECT max(version) FROM schema_version", &[])
            .expect("version")
            .get(0);
        assert_eq!(version, SCHEMA_VERSION);
        let alice = UserName::parse("alice").expect("name");
        assert_eq!(store.buddy_list(&alice).expect("read"), None);
        assert_eq!(store.contact_requests(&alice, 10).expect("read"), vec![]);
        drop(store);
        drop_schema(&url, &schema);
    }

    #[test]
    fn reconnects_once_after_the_server_killed_the_connection() {
        let Some(url) = url() else { return };
        let schema = fresh_schema(&url, "reconnect");
        let store = PostgresStore::connect_with_schema(&url, &schema).expect("connect");
        let alice = UserName::parse("alice").expect("name");
        store
            .create_account(&AccountRecord {
                user: alice.clone(),
                password_hash: "$argon2id$v=19$first".into(),
                created_at: UnixTime(10),
            })
            .expect("create");
        let pid: i32 = store
            .client()
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("pid")
            .get(0);
        let mut admin = Client::connect(&url, NoTls).expect("admin");
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .expect("terminate")
            .get(0);
        assert!(killed);
        // The next call finds the connection dead while using it, reconnects (keeping the
        // schema) and runs again.
        let got = store.account(&alice).expect("account after reconnect");
        assert_eq!(got.map(|a| a.created_at), Some(UnixTime(10)));
        let new_pid: i32 = store
            .client()
            .query_one("SELECT pg_backend_pid()", &[])
            .expect("pid")
            .get(0);
        assert_ne!(pid, new_pid);
        // Killed again, and this time the connection has noticed before the next call.
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&new_pid])
            .expect("terminate")
            .get(0);
        assert!(killed);
        std::thread::sleep(Duration::from_millis(300));
        store
            .set_password_hash(&alice, "$argon2id$v=19$second")
            .expect("write after reconnect");
        assert_eq!(
            store
                .account(&alice)
                .expect("account")
                .map(|a| a.password_hash),
            Some("$argon2id$v=19$second".to_owned())
        );
        drop(store);
        drop_schema(&url, &schema);
    }

    #[test]
    fn backend_errors_never_quote_row_values() {
        let Some(url) = url() else { return };
        let schema = fresh_schema(&url, "leak");
        let store = PostgresStore::connect_with_schema(&url, &schema).expect("connect");
        let secret = "$argon2id$v=19$m=65536,t=3,p=4$SECRETSALT$SECRETHASH";
        // A unique violation on the hash column, whose DETAIL quotes the value.
        let err = {
            let mut client = store.client();
            client
                .batch_execute("CREATE UNIQUE INDEX hash_unique ON accounts (password_hash)")
                .expect("index");
            for name in ["alice", "bob"] {
                let r = client.execute(
                    r#"INSERT INTO accounts ("user", password_hash, created_at) VALUES ($1, $2, 0)"#,
                    &[&name, &secret],
                );
                if let Err(e) = r {
                    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
                    assert!(
                        detail.contains("SECRETHASH"),
                        "the test needs a leaky DETAIL"
                    );
                    break;
                }
            }
            let r = client.execute(
                r#"INSERT INTO accounts ("user", password_hash, created_at) VALUES ('carol', $1, 0)"#,
                &[&secret],
            );
            r.expect_err("duplicate hash")
        };
        match backend(&err) {
            StoreError::Backend(msg) => {
                assert!(msg.contains("23505"), "{msg}");
                assert!(!msg.contains("SECRET"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        drop(store);
        drop_schema(&url, &schema);
    }
}
