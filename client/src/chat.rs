//! Chat on the client: the local history (SQLite, in the data directory, one file per user),
//! the queue of messages not yet delivered (kept across restarts and sent when the node runs),
//! and the node's chat events turned into the client's.
//!
//! The history holds each message once (by id), in the order every device shows it: by the
//! conversation's Lamport time, then the writing device, then the id (see
//! `natter_core::chat::log`). A message written here is stored at once as
//! [`MessageStatus::Sending`], then moves to `Sent`, `Delivered` (a device of the recipient
//! sealed a receipt for it) and `Read`; it never moves back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use natter_core::chat::{Body, ConversationId, Item, MessageId, Opened, Target};
use natter_core::crypto::{dh_mac, DeviceId, DeviceIdentity, UnixTime, UserName};
use rusqlite::{params, Connection, OptionalExtension};

use crate::client::lock;
use crate::error::ChatError;

/// Longest text of one message, in bytes of UTF-8 (64 KiB; larger content goes as a file).
pub const MAX_MESSAGE_TEXT: usize = natter_core::chat::item::MAX_TEXT;
/// A received message's Lamport time may be at most this far past the conversation's
/// highest (a larger one would push every later message behind it).
const MAX_LAMPORT_STEP: u64 = 1 << 32;
/// Most messages one [`Client::history`](crate::Client::history) or
/// [`Client::search_messages`](crate::Client::search_messages) call returns.
pub const MAX_PAGE: usize = 500;

/// Where a message of the history stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum MessageStatus {
    /// Written here, not yet handed to the network (the node is not running, or no device
    /// of the recipient is online yet: it waits, and is sent when one is).
    Sending,
    /// Handed to the network.
    Sent,
    /// A device of the recipient holds it (its receipt, sealed end to end, came back).
    Delivered,
    /// The recipient read it.
    Read,
    /// Could not be sent at all.
    Failed,
    /// Written by someone else (or by this user on another device) and received here.
    Received,
}

impl MessageStatus {
    fn code(self) -> i64 {
        match self {
            MessageStatus::Sending => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            MessageStatus::Failed => 4,
            MessageStatus::Received => 5,
        }
    }

    fn from_code(c: i64) -> Self {
        match c {
            0 => MessageStatus::Sending,
            1 => MessageStatus::Sent,
            2 => MessageStatus::Delivered,
            3 => MessageStatus::Read,
            4 => MessageStatus::Failed,
            _ => MessageStatus::Received,
        }
    }

    /// Its name, as the JSON interface and the command line show it.
    pub fn name(self) -> &'static str {
        match self {
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
        }
    }
}

/// One message of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Its id (the same on every device).
    pub id: MessageId,
    /// The other user of the one-to-one conversation it belongs to.
    pub with: UserName,
    /// Who wrote it.
    pub author: UserName,
    /// The device that wrote it.
    pub device: DeviceId,
    /// True when this user wrote it (here or on another of their devices).
    pub outgoing: bool,
    /// Its text.
    pub text: String,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// When its author wrote it (the author's clock).
    pub sent_at: SystemTime,
    /// Where it stands.
    pub status: MessageStatus,
}

/// The chat store of a client: see the [module documentation](self).
pub(crate) struct ChatStore {
    dir: Option<PathBuf>,
    db: Mutex<Option<Db>>,
}

struct Db {
    user: UserName,
    conn: Connection,
    /// Encrypts the saved end-to-end channels.
    state_key: [u8; 32],
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id BLOB NOT NULL,
    conversation BLOB NOT NULL,
    peer TEXT NOT NULL,
    author TEXT NOT NULL,
    device BLOB NOT NULL,
    lamport INTEGER NOT NULL,
    sent_at INTEGER NOT NULL,
    text TEXT NOT NULL,
    reply_to BLOB,
    status INTEGER NOT NULL,
    PRIMARY KEY (id, device)
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (conversation, lamport, device, id);
CREATE TABLE IF NOT EXISTS outbox (
    id BLOB PRIMARY KEY,
    recipients TEXT NOT NULL,
    item BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
";

fn store_err(e: rusqlite::Error) -> ChatError {
    ChatError::Store(e.to_string())
}

impl ChatStore {
    pub fn new(data_dir: Option<&Path>) -> Self {
        Self {
            dir: data_dir.map(Path::to_path_buf),
            db: Mutex::new(None),
        }
    }

    /// Open `user`'s history (a file in the data directory, else in memory) unless it is open.
    pub fn open(&self, user: &UserName, device: &DeviceIdentity) -> Result<(), ChatError> {
        let mut db = lock(&self.db);
        if db.as_ref().is_some_and(|d| &d.user == user) {
            return Ok(());
        }
        let conn = match &self.dir {
            Some(dir) => Connection::open(dir.join(format!("chat-{user}.sqlite"))),
            None => Connection::open_in_memory(),
        }
        .map_err(store_err)?;
        conn.execute_batch(SCHEMA).map_err(store_err)?;
        let (_, signing) = device.secret_bytes();
        *db = Some(Db {
            user: user.clone(),
            conn,
            state_key: dh_mac(&signing, b"natter-chat-state", &[]),
        });
        Ok(())
    }

    /// Close the history (logged out).
    pub fn forget(&self) {
        *lock(&self.db) = None;
    }

    fn with<T>(&self, f: impl FnOnce(&Db) -> Result<T, ChatError>) -> Result<T, ChatError> {
        let db = lock(&self.db);
        match db.as_ref() {
            Some(d) => f(d),
            None => Err(ChatError::NotLoggedIn),
        }
    }

    /// Store a new message of ours to `to` (status `Sending`) and queue it; returns what to
    /// hand the node.
    pub fn write(
        &self,
        to: &UserName,
        text: &str,
        reply_to: Option<MessageId>,
        id: MessageId,
        now: UnixTime,
        device: DeviceId,
    ) -> Result<(Item, ChatMessage), ChatError> {
        if text.len() > MAX_MESSAGE_TEXT {
            return Err(ChatError::TooLong {
                len: text.len(),
                max: MAX_MESSAGE_TEXT,
            });
        }
        self.with(|d| {
            let conversation = ConversationId::direct(&d.user, to);
            let lamport = 1 + max_lamport(&d.conn, conversation)?;
            let item = Item {
                id,
                to: Target::Direct(to.clone()),
                lamport,
                sent_at: now,
                body: Body::Text {
                    text: text.to_string(),
                    reply_to,
                },
            };
            let encoded = item.to_bytes().map_err(|e| ChatError::TooLong {
                len: e.len,
                max: e.max,
            })?;
            let tx = d.conn.unchecked_transaction().map_err(store_err)?;
            insert(
                &tx,
                &item,
                conversation,
                to,
                &d.user,
                device,
                MessageStatus::Sending,
            )?;
            tx.execute(
                "INSERT INTO outbox (id, recipients, item) VALUES (?1, ?2, ?3)",
                params![&id.0[..], to.as_str(), encoded],
            )
            .map_err(store_err)?;
            tx.commit().map_err(store_err)?;
            let message = ChatMessage {
                id,
                with: to.clone(),
                author: d.user.clone(),
                device,
                outgoing: true,
                text: text.to_string(),
                reply_to,
                sent_at: to_system(now),
                status: MessageStatus::Sending,
            };
            Ok((item, message))
        })
    }

    /// Everything queued and not yet delivered (to hand the node when it starts).
    pub fn queued(&self) -> Vec<(BTreeSet<UserName>, Item)> {
        self.with(|d| {
            let mut stmt = d
                .conn
                .prepare("SELECT recipients, item FROM outbox")
                .map_err(store_err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(store_err)?;
            let mut out = Vec::new();
            for row in rows.flatten() {
                let users: BTreeSet<UserName> = row
                    .0
                    .split(',')
                    .filter_map(|u| UserName::parse(u).ok())
                    .collect();
                if let Ok(item) = Item::decode(&row.1) {
                    out.push((users, item));
                }
            }
            Ok(out)
        })
        .unwrap_or_default()
    }

    /// A message that opened here: stored (once) when it is a text of a one-to-one
    /// conversation this user is in. `Ok(Some)`: new; `Ok(None)`: kept already, or not for the
    /// history; `Err`: it could not be stored (its sender is not told it was delivered).
    pub fn received(&self, opened: &Opened) -> Result<Option<ChatMessage>, ChatError> {
        self.with(|d| {
            let Body::Text { text, reply_to } = &opened.item.body else {
                return Ok(None);
            };
            let Target::Direct(to) = &opened.item.to else {
                return Ok(None);
            };
            // From someone else: to us. From ourselves (another device): to anyone.
            let peer = if opened.user == d.user {
                to.clone()
            } else if to == &d.user {
                opened.user.clone()
            } else {
                return Ok(None);
            };
            let conversation = ConversationId::direct(&d.user, &peer);
            // A Lamport time far past everything here would push every later message of the
            // conversation behind it: refused (such a sender has not seen that much).
            let max = max_lamport(&d.conn, conversation)?;
            if opened.item.lamport > max.saturating_add(MAX_LAMPORT_STEP) {
                return Ok(None);
            }
            let outgoing = opened.user == d.user;
            let status = if outgoing {
                MessageStatus::Sent
            } else {
                MessageStatus::Received
            };
            let new = insert(
                &d.conn,
                &opened.item,
                conversation,
                &peer,
                &opened.user,
                opened.device,
                status,
            )?;
            Ok(new.then(|| ChatMessage {
                id: opened.item.id,
                with: peer,
                author: opened.user.clone(),
                device: opened.device,
                outgoing,
                text: text.clone(),
                reply_to: *reply_to,
                sent_at: to_system(opened.item.sent_at),
                status,
            }))
        })
    }

    /// Move our message `id` forward to `status` (never back), as `by` says (the recipient:
    /// its receipts count only for messages written to it; `None`: this node). Delivered
    /// messages leave the queue, and failed ones. Returns the conversation's other user when
    /// it moved.
    pub fn advance(
        &self,
        id: MessageId,
        status: MessageStatus,
        by: Option<&UserName>,
    ) -> Option<UserName> {
        self.with(|d| {
            // Forward only, and only our own messages (to `by`); a failure only while sending.
            let sql = if status == MessageStatus::Failed {
                "UPDATE messages SET status = ?2 WHERE id = ?1 AND author = ?3 AND status = 0"
            } else {
                "UPDATE messages SET status = ?2 WHERE id = ?1 AND author = ?3
                 AND (?4 IS NULL OR peer = ?4) AND status < ?2 AND status < 4"
            };
            let by = by.map(|u| u.as_str().to_string());
            let changed = if status == MessageStatus::Failed {
                d.conn
                    .execute(sql, params![&id.0[..], status.code(), d.user.as_str()])
            } else {
                d.conn
                    .execute(sql, params![&id.0[..], status.code(), d.user.as_str(), by])
            }
            .map_err(store_err)?;
            if changed > 0 && matches!(status, MessageStatus::Delivered | MessageStatus::Failed) {
                d.conn
                    .execute("DELETE FROM outbox WHERE id = ?1", params![&id.0[..]])
                    .map_err(store_err)?;
            }
            if changed == 0 {
                return Ok(None);
            }
            d.conn
                .query_row(
                    "SELECT peer FROM messages WHERE id = ?1 AND author = ?2",
                    params![&id.0[..], d.user.as_str()],
                    |r| r.get::<_, String>(0),
                )
                .optional()
                .map_err(store_err)
                .map(|p| p.and_then(|p| UserName::parse(&p).ok()))
        })
        .ok()
        .flatten()
    }

    /// Up to `limit` messages with `with` before `before` (the newest when `None`), oldest
    /// first.
    pub fn history(
        &self,
        with: &UserName,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ChatError> {
        self.with(|d| {
            let conversation = ConversationId::direct(&d.user, with);
            let limit = limit.min(MAX_PAGE) as i64;
            let mut rows = match before {
                Some(b) => {
                    let Some((lamport, device)) = d
                        .conn
                        .query_row(
                            "SELECT lamport, device FROM messages WHERE id = ?1
                             AND conversation = ?2",
                            params![&b.0[..], &conversation.0[..]],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
                        )
                        .optional()
                        .map_err(store_err)?
                    else {
                        return Err(ChatError::UnknownMessage(b.to_hex()));
                    };
                    select(
                        &d.conn,
                        &d.user,
                        "WHERE conversation = ?1 AND (lamport, device, id) < (?2, ?3, ?4)
                         ORDER BY lamport DESC, device DESC, id DESC LIMIT ?5",
                        params![&conversation.0[..], lamport, device, &b.0[..], limit],
                    )?
                }
                None => select(
                    &d.conn,
                    &d.user,
                    "WHERE conversation = ?1 ORDER BY lamport DESC, device DESC, id DESC LIMIT ?2",
                    params![&conversation.0[..], limit],
                )?,
            };
            rows.reverse();
            Ok(rows)
        })
    }

    /// Up to `limit` messages, newest first, whose text contains `text` (case-insensitive
    /// for ASCII).
    pub fn search(&self, text: &str, limit: usize) -> Result<Vec<ChatMessage>, ChatError> {
        self.with(|d| {
            let pattern = format!(
                "%{}%",
                text.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            select(
                &d.conn,
                &d.user,
                "WHERE text LIKE ?1 ESCAPE '\\' ORDER BY sent_at DESC, lamport DESC LIMIT ?2",
                params![pattern, limit.min(MAX_PAGE) as i64],
            )
        })
    }

    /// The saved end-to-end channels and the key they are sealed with.
    pub fn channels(&self) -> Option<(Vec<u8>, [u8; 32])> {
        self.with(|d| {
            let saved = d
                .conn
                .query_row("SELECT value FROM state WHERE key = 'channels'", [], |r| {
                    r.get::<_, Vec<u8>>(0)
                })
                .optional()
                .map_err(store_err)?;
            Ok(saved.map(|s| (s, d.state_key)))
        })
        .ok()
        .flatten()
    }

    /// The key the channels are sealed with.
    pub fn state_key(&self) -> Option<[u8; 32]> {
        self.with(|d| Ok(d.state_key)).ok()
    }

    /// Keep the end-to-end channels (sealed by the node with [`ChatStore::state_key`]).
    pub fn save_channels(&self, saved: &[u8]) {
        let r = self.with(|d| {
            d.conn
                .execute(
                    "INSERT OR REPLACE INTO state (key, value) VALUES ('channels', ?1)",
                    params![saved],
                )
                .map_err(store_err)
        });
        if let Err(e) = r {
            tracing::warn!(%e, "chat channels not saved");
        }
    }
}

fn max_lamport(conn: &Connection, conversation: ConversationId) -> Result<u64, ChatError> {
    conn.query_row(
        "SELECT COALESCE(MAX(lamport), 0) FROM messages WHERE conversation = ?1",
        params![&conversation.0[..]],
        |r| r.get::<_, i64>(0),
    )
    .map(|l| l.max(0) as u64)
    .map_err(store_err)
}

/// Store `item` once; true when it was new.
fn insert(
    conn: &Connection,
    item: &Item,
    conversation: ConversationId,
    peer: &UserName,
    author: &UserName,
    device: DeviceId,
    status: MessageStatus,
) -> Result<bool, ChatError> {
    let Body::Text { text, reply_to } = &item.body else {
        return Ok(false);
    };
    let lamport = i64::try_from(item.lamport).unwrap_or(i64::MAX);
    let sent_at = i64::try_from(item.sent_at.0).unwrap_or(i64::MAX);
    conn.execute(
        "INSERT OR IGNORE INTO messages
         (id, conversation, peer, author, device, lamport, sent_at, text, reply_to, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            &item.id.0[..],
            &conversation.0[..],
            peer.as_str(),
            author.as_str(),
            &device.0[..],
            lamport,
            sent_at,
            text,
            reply_to.map(|r| r.0.to_vec()),
            status.code(),
        ],
    )
    .map(|n| n == 1)
    .map_err(store_err)
}

fn select(
    conn: &Connection,
    me: &UserName,
    tail: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<ChatMessage>, ChatError> {
    let sql = format!(
        "SELECT id, peer, author, device, text, reply_to, sent_at, status FROM messages {tail}"
    );
    let mut stmt = conn.prepare(&sql).map_err(store_err)?;
    let rows = stmt
        .query_map(params, |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<Vec<u8>>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .map_err(store_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, peer, author, device, text, reply_to, sent_at, status) = row.map_err(store_err)?;
        let (Ok(id), Ok(peer), Ok(author), Ok(device)) = (
            <[u8; 16]>::try_from(id.as_slice()),
            UserName::parse(&peer),
            UserName::parse(&author),
            <[u8; 16]>::try_from(device.as_slice()),
        ) else {
            continue;
        };
        out.push(ChatMessage {
            id: MessageId(id),
            outgoing: &author == me,
            with: peer,
            author,
            device: DeviceId(device),
            text,
            reply_to: reply_to
                .and_then(|r| <[u8; 16]>::try_from(r.as_slice()).ok())
                .map(MessageId),
            sent_at: to_system(UnixTime(sent_at.max(0) as u64)),
            status: MessageStatus::from_code(status),
        });
    }
    Ok(out)
}

fn to_system(t: UnixTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.0)
}
