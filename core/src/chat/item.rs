//! What a chat message says, once decrypted: its id, its conversation, its place in the
//! conversation's causal order, and its body (text, an edit, a receipt, a group change...).

use std::fmt;

use blake2::{Blake2s256, Digest};
use bytes::{BufMut, BytesMut};

use crate::crypto::{UnixTime, UserName};
use crate::rng::Rng;
use crate::wire::message::read_user;
use crate::wire::{DecodeError, Reader};

/// Longest text in one message, in bytes of UTF-8: 64 KiB (larger content goes by file
/// transfer).
pub const MAX_TEXT: usize = 64 * 1024;
/// Longest group name, in bytes of UTF-8.
pub const MAX_GROUP_NAME: usize = 256;
/// Most members of a group.
pub const MAX_MEMBERS: usize = 100;
/// Most message ids one receipt acknowledges.
pub const MAX_RECEIPT_IDS: usize = 256;
const VERSION: u8 = 1;

fn hex6(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in &bytes[..6] {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// A message's unique id: 16 random bytes drawn by its sender.
///
/// Unique across all conversations; the same id on every copy of the message (each recipient
/// device's, each retransmission), which is what makes delivery exactly-once to the app.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random(rng: &mut Rng) -> Self {
        let mut id = [0; 16];
        rng.fill(&mut id);
        Self(id)
    }

    /// All 32 hex digits (what applications show and pass back).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// An id from its 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut id = [0; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex6(f, &self.0)
    }
}

/// A conversation's id: derived from the two user names for a one-to-one conversation
/// ([`ConversationId::direct`]), random for a group ([`ConversationId::random`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub [u8; 16]);

impl ConversationId {
    /// The one-to-one conversation of `a` and `b` (the same whichever way round).
    pub fn direct(a: &UserName, b: &UserName) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut h = Blake2s256::new();
        h.update(b"natter-direct-conversation");
        h.update([lo.as_str().len() as u8]);
        h.update(lo.as_str());
        h.update([hi.as_str().len() as u8]);
        h.update(hi.as_str());
        let digest = h.finalize();
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }

    /// A fresh random id (a new group).
    pub fn random(rng: &mut Rng) -> Self {
        let mut id = [0; 16];
        rng.fill(&mut id);
        Self(id)
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationId({self})")
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex6(f, &self.0)
    }
}

/// Where a message goes: to one user (a one-to-one conversation) or to a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// The one-to-one conversation of the author with this user. A copy on the author's own
    /// other devices says whom the author wrote to; a copy on the user's devices names them.
    Direct(UserName),
    /// A group conversation.
    Group(ConversationId),
}

impl Target {
    /// The conversation a message from `author` to this target belongs to.
    pub fn conversation(&self, author: &UserName) -> ConversationId {
        match self {
            Target::Direct(user) => ConversationId::direct(author, user),
            Target::Group(id) => *id,
        }
    }
}

/// What a receipt says about the messages it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReceiptKind {
    /// The device holds them (sent by every receiving device on its own).
    Delivered,
    /// The reader has seen them (sent only when the reader allows read receipts).
    Read,
}

/// What a message does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// A text message, perhaps replying to an earlier one.
    Text {
        /// At most [`MAX_TEXT`] bytes of UTF-8.
        text: String,
        /// The message it replies to.
        reply_to: Option<MessageId>,
    },
    /// New text for one of the author's own earlier messages.
    Edit {
        /// The edited message.
        target: MessageId,
        /// Its new text.
        text: String,
    },
    /// Deletes one of the author's own earlier messages.
    Delete {
        /// The deleted message.
        target: MessageId,
    },
    /// Delivery or read receipts for messages of the conversation.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// The messages (at most [`MAX_RECEIPT_IDS`]).
        ids: Vec<MessageId>,
    },
    /// The author started or stopped typing (never stored).
    Typing {
        /// Typing now.
        on: bool,
    },
    /// Creates a group: its name and its members (the author among them).
    GroupCreate {
        /// The group's name.
        name: String,
        /// Its members, at most [`MAX_MEMBERS`].
        members: Vec<UserName>,
    },
    /// Adds members to a group.
    GroupAdd {
        /// The new members.
        users: Vec<UserName>,
    },
    /// Removes members from a group (they read nothing sent after it).
    GroupRemove {
        /// The removed members.
        users: Vec<UserName>,
    },
    /// Renames a group.
    GroupRename {
        /// The new name.
        name: String,
    },
    /// The author leaves the group.
    GroupLeave,
}

impl Body {
    fn tag(&self) -> u8 {
        match self {
            Body::Text { .. } => 1,
            Body::Edit { .. } => 2,
            Body::Delete { .. } => 3,
            Body::Receipt { .. } => 4,
            Body::Typing { .. } => 5,
            Body::GroupCreate { .. } => 6,
            Body::GroupAdd { .. } => 7,
            Body::GroupRemove { .. } => 8,
            Body::GroupRename { .. } => 9,
            Body::GroupLeave => 10,
        }
    }

    /// True for what a conversation keeps in its history (text, edits, deletions, group
    /// changes); false for receipts and typing, which only update state.
    pub fn is_stored(&self) -> bool {
        !matches!(self, Body::Receipt { .. } | Body::Typing { .. })
    }
}

/// One decrypted chat message. Its author is not in it: it is the device whose end-to-end
/// channel it came through (see [`super::channel`]), which nobody else can forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The message's id (also on the envelope, and checked equal).
    pub id: MessageId,
    /// Whom it is for: one user, or a group.
    pub to: Target,
    /// Its Lamport time in the conversation: greater than that of every message its author
    /// had seen there when it wrote it (see [`super::log`]).
    pub lamport: u64,
    /// The author's wall clock when it wrote it (shown, never used for ordering).
    pub sent_at: UnixTime,
    /// What it says or does.
    pub body: Body,
}

fn put_text(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn read_text(r: &mut Reader<'_>, what: &'static str, max: usize) -> Result<String, DecodeError> {
    let len = r.u32()? as usize;
    if len > max {
        return Err(DecodeError::TooLong { what, len, max });
    }
    let raw = r.take(len)?;
    String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Invalid(what))
}

fn put_users(out: &mut BytesMut, users: &[UserName]) {
    out.put_u8(users.len() as u8);
    for u in users {
        out.put_u8(u.as_str().len() as u8);
        out.put_slice(u.as_str().as_bytes());
    }
}

fn read_users(r: &mut Reader<'_>) -> Result<Vec<UserName>, DecodeError> {
    let n = usize::from(r.u8()?);
    if n > MAX_MEMBERS {
        return Err(DecodeError::TooLong {
            what: "members",
            len: n,
            max: MAX_MEMBERS,
        });
    }
    (0..n).map(|_| read_user(r)).collect()
}

fn put_id(out: &mut BytesMut, id: Option<MessageId>) {
    match id {
        Some(id) => {
            out.put_u8(1);
            out.put_slice(&id.0);
        }
        None => out.put_u8(0),
    }
}

/// Why an item cannot be encoded: a field is over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} too long: {len} > {max}")]
pub struct TooLong {
    /// Which field.
    pub what: &'static str,
    /// Its length.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

fn check(what: &'static str, len: usize, max: usize) -> Result<(), TooLong> {
    if len > max {
        Err(TooLong { what, len, max })
    } else {
        Ok(())
    }
}

impl Item {
    /// Check every field against its limit (what [`Item::decode`] enforces).
    pub fn check(&self) -> Result<(), TooLong> {
        match &self.body {
            Body::Text { text, .. } | Body::Edit { text, .. } => {
                check("text", text.len(), MAX_TEXT)
            }
            Body::Receipt { ids, .. } => check("receipt", ids.len(), MAX_RECEIPT_IDS),
            Body::GroupCreate { name, members } => {
                check("group name", name.len(), MAX_GROUP_NAME)?;
                check("members", members.len(), MAX_MEMBERS)
            }
            Body::GroupAdd { users } | Body::GroupRemove { users } => {
                check("members", users.len(), MAX_MEMBERS)
            }
            Body::GroupRename { name } => check("group name", name.len(), MAX_GROUP_NAME),
            Body::Delete { .. } | Body::Typing { .. } | Body::GroupLeave => Ok(()),
        }
    }

    /// The encoded item, once its limits are checked.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TooLong> {
        self.check()?;
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(VERSION);
        out.put_slice(&self.id.0);
        match &self.to {
            Target::Direct(user) => {
                out.put_u8(0);
                out.put_u8(user.as_str().len() as u8);
                out.put_slice(user.as_str().as_bytes());
            }
            Target::Group(id) => {
                out.put_u8(1);
                out.put_slice(&id.0);
            }
        }
        out.put_u64(self.lamport);
        out.put_u64(self.sent_at.0);
        out.put_u8(self.body.tag());
        match &self.body {
            Body::Text { text, reply_to } => {
                put_id(&mut out, *reply_to);
                put_text(&mut out, text);
            }
            Body::Edit { target, text } => {
                out.put_slice(&target.0);
                put_text(&mut out, text);
            }
            Body::Delete { target } => out.put_slice(&target.0),
            Body::Receipt { kind, ids } => {
                out.put_u8(match kind {
                    ReceiptKind::Delivered => 0,
                    ReceiptKind::Read => 1,
                });
                out.put_u16(ids.len() as u16);
                for id in ids {
                    out.put_slice(&id.0);
                }
            }
            Body::Typing { on } => out.put_u8(u8::from(*on)),
            Body::GroupCreate { name, members } => {
                put_text(&mut out, name);
                put_users(&mut out, members);
            }
            Body::GroupAdd { users } | Body::GroupRemove { users } => put_users(&mut out, users),
            Body::GroupRename { name } => put_text(&mut out, name),
            Body::GroupLeave => {}
        }
        Ok(out.to_vec())
    }

    /// Decode a whole buffer, enforcing every limit.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        if r.u8()? != VERSION {
            return Err(DecodeError::Invalid("chat item version"));
        }
        let id = MessageId(r.array()?);
        let to = match r.u8()? {
            0 => Target::Direct(read_user(&mut r)?),
            1 => Target::Group(ConversationId(r.array()?)),
            _ => return Err(DecodeError::Invalid("chat target")),
        };
        let lamport = r.u64()?;
        let sent_at = UnixTime(r.u64()?);
        let body = match r.u8()? {
            1 => {
                let reply_to = match r.u8()? {
                    0 => None,
                    1 => Some(MessageId(r.array()?)),
                    _ => return Err(DecodeError::Invalid("reply flag")),
                };
                Body::Text {
                    text: read_text(&mut r, "text", MAX_TEXT)?,
                    reply_to,
                }
            }
            2 => Body::Edit {
                target: MessageId(r.array()?),
                text: read_text(&mut r, "text", MAX_TEXT)?,
            },
            3 => Body::Delete {
                target: MessageId(r.array()?),
            },
            4 => {
                let kind = match r.u8()? {
                    0 => ReceiptKind::Delivered,
                    1 => ReceiptKind::Read,
                    _ => return Err(DecodeError::Invalid("receipt kind")),
                };
                let n = usize::from(r.u16()?);
                if n > MAX_RECEIPT_IDS {
                    return Err(DecodeError::TooLong {
                        what: "receipt",
                        len: n,
                        max: MAX_RECEIPT_IDS,
                    });
                }
                let ids = (0..n)
                    .map(|_| r.array().map(MessageId))
                    .collect::<Result<_, _>>()?;
                Body::Receipt { kind, ids }
            }
            5 => Body::Typing {
                on: r.bool("typing flag")?,
            },
            6 => Body::GroupCreate {
                name: read_text(&mut r, "group name", MAX_GROUP_NAME)?,
                members: read_users(&mut r)?,
            },
            7 => Body::GroupAdd {
                users: read_users(&mut r)?,
            },
            8 => Body::GroupRemove {
                users: read_users(&mut r)?,
            },
            9 => Body::GroupRename {
                name: read_text(&mut r, "group name", MAX_GROUP_NAME)?,
            },
            10 => Body::GroupLeave,
            _ => return Err(DecodeError::Invalid("chat item kind")),
        };
        r.finish()?;
        Ok(Self {
            id,
            to,
            lamport,
            sent_at,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    fn bodies() -> Vec<Body> {
        vec![
            Body::Text {
                text: "hello 👋".into(),
                reply_to: Some(MessageId([7; 16])),
            },
            Body::Text {
                text: String::new(),
                reply_to: None,
            },
            Body::Edit {
                target: MessageId([1; 16]),
                text: "fixed".into(),
            },
            Body::Delete {
                target: MessageId([2; 16]),
            },
            Body::Receipt {
                kind: ReceiptKind::Read,
                ids: vec![MessageId([3; 16]), MessageId([4; 16])],
            },
            Body::Typing { on: true },
            Body::GroupCreate {
                name: "climbing".into(),
                members: vec![user("alice"), user("bob"), user("carol")],
            },
            Body::GroupAdd {
                users: vec![user("dave")],
            },
            Body::GroupRemove {
                users: vec![user("bob")],
            },
            Body::GroupRename {
                name: "bouldering".into(),
            },
            Body::GroupLeave,
        ]
    }

    #[test]
    fn every_body_roundtrips() {
        for (i, body) in bodies().into_iter().enumerate() {
            let item = Item {
                id: MessageId([i as u8; 16]),
                to: if i % 2 == 0 {
                    Target::Direct(user("bob"))
                } else {
                    Target::Group(ConversationId([9; 16]))
                },
                lamport: 40 + i as u64,
                sent_at: UnixTime(1_767_225_600),
                body,
            };
            let bytes = item.to_bytes().unwrap();
            assert_eq!(Item::decode(&bytes).unwrap(), item);
            // Every strict prefix is refused, never a panic.
            for cut in 0..bytes.len() {
                assert!(Item::decode(&bytes[..cut]).is_err(), "prefix {cut} of {i}");
            }
        }
    }

    #[test]
    fn limits_hold_both_ways() {
        let item = |text: String| Item {
            id: MessageId([1; 16]),
            to: Target::Group(ConversationId([2; 16])),
            lamport: 1,
            sent_at: UnixTime(0),
            body: Body::Text {
                text,
                reply_to: None,
            },
        };
        assert!(item("x".repeat(MAX_TEXT)).to_bytes().is_ok());
        let over = item("x".repeat(MAX_TEXT + 1));
        assert_eq!(
            over.to_bytes(),
            Err(TooLong {
                what: "text",
                len: MAX_TEXT + 1,
                max: MAX_TEXT
            })
        );
        // An encoder that ignored the limit would not get past the decoder either.
        let mut bytes = item("x".repeat(MAX_TEXT)).to_bytes().unwrap();
        bytes.push(b'x');
        let len_at = 1 + 16 + 17 + 8 + 8 + 1 + 1;
        bytes[len_at..len_at + 4].copy_from_slice(&((MAX_TEXT + 1) as u32).to_be_bytes());
        assert!(matches!(
            Item::decode(&bytes),
            Err(DecodeError::TooLong { what: "text", .. })
        ));
    }

    #[test]
    fn ids_go_to_hex_and_back() {
        let id = MessageId([0xA5; 16]);
        assert_eq!(MessageId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(MessageId::from_hex("a5"), None);
        assert_eq!(MessageId::from_hex(&"zz".repeat(16)), None);
        assert_eq!(MessageId::from_hex(&"é".repeat(16)), None);
    }

    #[test]
    fn direct_conversations_are_symmetric_and_distinct() {
        let (a, b, c) = (user("alice"), user("bob"), user("carol"));
        assert_eq!(
            ConversationId::direct(&a, &b),
            ConversationId::direct(&b, &a)
        );
        assert_ne!(
            ConversationId::direct(&a, &b),
            ConversationId::direct(&a, &c)
        );
        // Name boundaries are length-prefixed: ("ab", "cde") is not ("abc", "de").
        assert_ne!(
            ConversationId::direct(&user("abx"), &user("cde")),
            ConversationId::direct(&user("abxc"), &user("dex"))
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Item::decode(&bytes);
        }

        #[test]
        fn text_items_roundtrip(text in ".{0,200}", lamport in any::<u64>(), reply in any::<Option<[u8; 16]>>()) {
            let item = Item {
                id: MessageId([5; 16]),
                to: Target::Direct(UserName::parse("carol").unwrap()),
                lamport,
                sent_at: UnixTime(12),
                body: Body::Text { text, reply_to: reply.map(MessageId) },
            };
            prop_assert_eq!(Item::decode(&item.to_bytes().unwrap()).unwrap(), item);
        }
    }
}
