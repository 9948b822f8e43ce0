//! A conversation as every device shows it: each message once, in the same order everywhere.
//!
//! **Order.** Every message carries a Lamport time: its author's clock in that conversation,
//! one more than the highest time the author had seen there. So a message that answers
//! another (causally after it) always has a higher time. Messages are shown by
//! (Lamport time, author device, message id): a total order that every device computes the
//! same way from the same set of messages, whatever order they arrived in. A message that
//! arrives late is placed where it belongs, not at the end.
//!
//! **Exactly once.** The wire delivers at least once; a [`Conversation`] lets each message id
//! in once and reports any later copy as a duplicate.
//!
//! **Edits and deletions** apply only to the author's own messages; one that arrives before
//! its target waits for it.
//!
//! **Membership.** A one-to-one conversation has its two users; a group has the members its
//! creation names, changed by the additions, removals and departures in the history, applied
//! in the history's order (so every device computes the same members whatever order the
//! changes arrived in). A message from someone who is not a member at the message's place in
//! the order is refused. Any member may add or remove others. What a removed member sends later
//! is refused by every device that knows of the removal; what is sent to the group after it is
//! not even sealed for the removed member's devices (see [`super::channel`]).

use std::collections::{BTreeMap, BTreeSet};

use super::item::{Body, ConversationId, Item, MessageId};
use crate::crypto::{DeviceId, UnixTime, UserName};

/// Where a message stands in the conversation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The message's Lamport time.
    pub lamport: u64,
    /// The device that wrote it.
    pub device: DeviceId,
    /// Its id.
    pub id: MessageId,
}

/// Most edits and deletions held for messages that have not arrived, per conversation.
pub const MAX_WAITING: usize = 1024;

/// A message as the conversation keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The author.
    pub author: UserName,
    /// Its place in the order.
    pub position: Position,
    /// The author's clock when written.
    pub sent_at: UnixTime,
    /// What it is now (a text's latest edit, or the deletion that replaced it).
    pub body: Body,
    /// Edited at least once.
    pub edited: bool,
    /// The latest edit or deletion applied (an older one arriving later changes nothing: the
    /// same text on every device, whatever order the edits came in).
    pub changed_by: Option<Position>,
    /// Deleted by its author (the text is gone).
    pub deleted: bool,
}

/// What [`Conversation::insert`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new message, now at this position.
    New(Position),
    /// An edit or deletion applied to this earlier message.
    Changed(MessageId),
    /// An edit or deletion of a message not here yet: kept until it arrives.
    Waiting,
    /// A message already here (a copy: nothing changed).
    Duplicate,
}

/// Why a message was refused by a conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The message names another conversation.
    #[error("the message belongs to another conversation")]
    WrongConversation,
    /// Its author is not a member.
    #[error("{0} is not a member of the conversation")]
    NotMember(UserName),
    /// An edit or deletion of someone else's message.
    #[error("only a message's author may edit or delete it")]
    NotAuthor,
    /// Receipts and typing are not kept in a conversation's history.
    #[error("receipts and typing are not history")]
    NotHistory,
    /// A group change in a one-to-one conversation.
    #[error("group changes belong to groups")]
    NotAGroup,
    /// Too many edits and deletions wait for messages that have not arrived.
    #[error("too many changes wait for their messages")]
    TooManyWaiting,
}

/// The kind of conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Two users.
    Direct,
    /// A group with a name.
    Group {
        /// Its current name.
        name: String,
    },
}

/// One conversation's history: see the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Conversation {
    id: ConversationId,
    kind: Kind,
    /// The members at creation.
    founders: BTreeSet<UserName>,
    /// Membership changes and renames by position, with their authors.
    changes: BTreeMap<Position, (UserName, Body)>,
    /// The members after every change (derived from `founders` and `changes`).
    members: BTreeSet<UserName>,
    entries: BTreeMap<Position, Entry>,
    by_id: BTreeMap<MessageId, Position>,
    /// Edits and deletions whose target has not arrived, by target.
    waiting: BTreeMap<MessageId, Vec<(UserName, DeviceId, Item)>>,
    clock: u64,
}

impl Conversation {
    /// The one-to-one conversation of `a` and `b`.
    pub fn direct(a: &UserName, b: &UserName) -> Self {
        Self::with(
            ConversationId::direct(a, b),
            Kind::Direct,
            [a.clone(), b.clone()].into_iter().collect(),
        )
    }

    /// A group conversation, as its creation message describes it.
    pub fn group(id: ConversationId, name: String, members: BTreeSet<UserName>) -> Self {
        Self::with(id, Kind::Group { name }, members)
    }

    fn with(id: ConversationId, kind: Kind, members: BTreeSet<UserName>) -> Self {
        Self {
            id,
            kind,
            founders: members.clone(),
            changes: BTreeMap::new(),
            members,
            entries: BTreeMap::new(),
            by_id: BTreeMap::new(),
            waiting: BTreeMap::new(),
            clock: 0,
        }
    }

    /// Its id.
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// Direct or group (with the group's name).
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// Its members now.
    pub fn members(&self) -> &BTreeSet<UserName> {
        &self.members
    }

    /// The Lamport time for the next message written here.
    pub fn next_lamport(&mut self) -> u64 {
        self.clock = self.clock.saturating_add(1);
        self.clock
    }

    /// The messages in order.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.values()
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it holds no message.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The message with this id.
    pub fn get(&self, id: MessageId) -> Option<&Entry> {
        self.by_id.get(&id).and_then(|p| self.entries.get(p))
    }

    /// Let a message in (once), written by `author`'s `device`.
    pub fn insert(
        &mut self,
        author: &UserName,
        device: DeviceId,
        item: Item,
    ) -> Result<Inserted, LogError> {
        if item.to.conversation(author) != self.id {
            return Err(LogError::WrongConversation);
        }
        if !item.body.is_stored() {
            return Err(LogError::NotHistory);
        }
        if self.by_id.contains_key(&item.id) {
            return Ok(Inserted::Duplicate);
        }
        let position = Position {
            lamport: item.lamport,
            device,
            id: item.id,
        };
        let group_change = matches!(
            item.body,
            Body::GroupCreate { .. }
                | Body::GroupAdd { .. }
                | Body::GroupRemove { .. }
                | Body::GroupLeave
                | Body::GroupRename { .. }
        );
        if group_change && self.kind == Kind::Direct {
            return Err(LogError::NotAGroup);
        }
        if !self.members_at(position).contains(author) {
            return Err(LogError::NotMember(author.clone()));
        }
        match &item.body {
            Body::Edit { target, .. } | Body::Delete { target } => {
                let target = *target;
                if !self.by_id.contains_key(&target) {
                    let held: usize = self.waiting.values().map(Vec::len).sum();
                    let list = self.waiting.entry(target).or_default();
                    if list.iter().any(|(_, _, w)| w.id == item.id) {
                        return Ok(Inserted::Duplicate);
                    }
                    if held >= MAX_WAITING {
                        return Err(LogError::TooManyWaiting);
                    }
                    self.clock = self.clock.max(item.lamport);
                    list.push((author.clone(), device, item));
                    return Ok(Inserted::Waiting);
                }
                self.apply_change(author, position, &item)?;
                self.clock = self.clock.max(item.lamport);
                // A change is a message too: its id is now spent.
                self.by_id.insert(item.id, self.by_id[&target]);
                Ok(Inserted::Changed(target))
            }
            _ => {
                self.clock = self.clock.max(item.lamport);
                if group_change {
                    self.changes
                        .insert(position, (author.clone(), item.body.clone()));
                    self.members = self.members_at(Position {
                        lamport: u64::MAX,
                        device: DeviceId([0xff; 16]),
                        id: MessageId([0xff; 16]),
                    });
                    if let Kind::Group { name } = &mut self.kind {
                        if let Some((_, Body::GroupRename { name: last })) = self
                            .changes
                            .values()
                            .rev()
                            .find(|(_, b)| matches!(b, Body::GroupRename { .. }))
                        {
                            name.clone_from(last);
                        }
                    }
                }
                self.entries.insert(
                    position,
                    Entry {
                        author: author.clone(),
                        position,
                        sent_at: item.sent_at,
                        body: item.body,
                        edited: false,
                        deleted: false,
                        changed_by: None,
                    },
                );
                self.by_id.insert(item.id, position);
                if let Some(changes) = self.waiting.remove(&item.id) {
                    for (who, device, change) in changes {
                        let at = Position {
                            lamport: change.lamport,
                            device,
                            id: change.id,
                        };
                        if self.apply_change(&who, at, &change).is_ok() {
                            self.by_id.insert(change.id, position);
                        }
                    }
                }
                Ok(Inserted::New(position))
            }
        }
    }

    /// Apply an edit or deletion at position `at` to its target, unless a later one (in the
    /// conversation's order) was applied already or the target is deleted.
    fn apply_change(
        &mut self,
        author: &UserName,
        at: Position,
        change: &Item,
    ) -> Result<(), LogError> {
        let (Body::Edit { target, .. } | Body::Delete { target }) = &change.body else {
            return Ok(());
        };
        let position = self.by_id[target];
        let entry = self.entries.get_mut(&position).expect("indexed");
        if &entry.author != author {
            return Err(LogError::NotAuthor);
        }
        if entry.deleted || entry.changed_by.is_some_and(|c| c > at) {
            return Ok(());
        }
        entry.changed_by = Some(at);
        match &change.body {
            Body::Edit { text, .. } => {
                if let Body::Text { text: old, .. } = &mut entry.body {
                    *old = text.clone();
                    entry.edited = true;
                }
            }
            _ => {
                entry.deleted = true;
                if let Body::Text { text, .. } = &mut entry.body {
                    text.clear();
                }
            }
        }
        Ok(())
    }

    /// The members just before `position`: the founders, changed by every membership change
    /// ordered before it.
    fn members_at(&self, position: Position) -> BTreeSet<UserName> {
        let mut members = self.founders.clone();
        for (who, body) in self.changes.range(..position).map(|(_, c)| c) {
            match body {
                Body::GroupAdd { users } => members.extend(users.iter().cloned()),
                Body::GroupRemove { users } => {
                    for u in users {
                        members.remove(u);
                    }
                }
                Body::GroupLeave => {
                    members.remove(who);
                }
                _ => {}
            }
        }
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::item::Target;

    fn user(s: &str) -> UserName {
        UserName::parse(s).unwrap()
    }

    fn text(to: Target, id: u8, lamport: u64, s: &str) -> Item {
        Item {
            id: MessageId([id; 16]),
            to,
            lamport,
            sent_at: UnixTime(1000 + u64::from(id)),
            body: Body::Text {
                text: s.into(),
                reply_to: None,
            },
        }
    }

    fn texts(c: &Conversation) -> Vec<String> {
        c.entries()
            .map(|e| match &e.body {
                Body::Text { text, .. } => text.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn every_arrival_order_gives_the_same_history_once() {
        let (a, b) = (user("alice"), user("bob"));
        let (da, db) = (DeviceId([1; 16]), DeviceId([2; 16]));
        let (to_b, to_a) = (Target::Direct(b.clone()), Target::Direct(a.clone()));
        // alice: "hi" (1); bob answers "hello" (2) while alice, concurrently, writes "you
        // there?" (2); then alice "good" (3).
        let msgs = [
            (a.clone(), da, text(to_b.clone(), 1, 1, "hi")),
            (b.clone(), db, text(to_a, 2, 2, "hello")),
            (a.clone(), da, text(to_b.clone(), 3, 2, "you there?")),
            (a.clone(), da, text(to_b, 4, 3, "good")),
        ];
        let mut reference: Option<Vec<String>> = None;
        // All 24 arrival orders, each message delivered twice.
        let mut order = [0usize, 1, 2, 3];
        for _ in 0..24 {
            let mut c = Conversation::direct(&a, &b);
            for &i in order.iter().chain(order.iter().rev()) {
                let (who, dev, item) = &msgs[i];
                c.insert(who, *dev, item.clone()).unwrap();
            }
            assert_eq!(c.len(), 4, "each message once");
            let shown = texts(&c);
            match &reference {
                None => reference = Some(shown),
                Some(r) => assert_eq!(&shown, r, "order {order:?}"),
            }
            assert_eq!(c.next_lamport(), 4, "the clock moved past everything seen");
            next_permutation(&mut order);
        }
        assert_eq!(
            reference.unwrap(),
            vec!["hi", "you there?", "hello", "good"],
            "ties broken by device, causality kept"
        );
    }

    fn next_permutation(v: &mut [usize]) {
        let Some(i) = (0..v.len() - 1).rev().find(|&i| v[i] < v[i + 1]) else {
            v.reverse();
            return;
        };
        let j = (i + 1..v.len()).rev().find(|&j| v[j] > v[i]).unwrap();
        v.swap(i, j);
        v[i + 1..].reverse();
    }

    #[test]
    fn strangers_other_conversations_and_others_edits_are_refused() {
        let (a, b, m) = (user("alice"), user("bob"), user("mallory"));
        let conv = Target::Direct(b.clone());
        let mut c = Conversation::direct(&a, &b);
        // A stranger writing to bob writes in another conversation.
        assert_eq!(
            c.insert(&m, DeviceId([9; 16]), text(conv.clone(), 1, 1, "spam")),
            Err(LogError::WrongConversation)
        );
        assert_eq!(
            c.insert(
                &a,
                DeviceId([1; 16]),
                text(Target::Direct(m.clone()), 2, 1, "wrong")
            ),
            Err(LogError::WrongConversation)
        );
        c.insert(&a, DeviceId([1; 16]), text(conv, 3, 1, "mine"))
            .unwrap();
        let edit = Item {
            id: MessageId([4; 16]),
            to: Target::Direct(a.clone()),
            lamport: 2,
            sent_at: UnixTime(0),
            body: Body::Edit {
                target: MessageId([3; 16]),
                text: "bob's now".into(),
            },
        };
        assert_eq!(
            c.insert(&b, DeviceId([2; 16]), edit),
            Err(LogError::NotAuthor)
        );
        assert_eq!(texts(&c), vec!["mine"], "nothing changed");
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn edits_and_deletions_apply_whenever_they_arrive() {
        let (a, b) = (user("alice"), user("bob"));
        let da = DeviceId([1; 16]);
        let conv = Target::Direct(b.clone());
        let change = |id: u8, lamport: u64, body: Body| Item {
            id: MessageId([id; 16]),
            to: conv.clone(),
            lamport,
            sent_at: UnixTime(0),
            body,
        };
        let edit = change(
            2,
            2,
            Body::Edit {
                target: MessageId([1; 16]),
                text: "hi there".into(),
            },
        );
        let delete = change(
            3,
            3,
            Body::Delete {
                target: MessageId([1; 16]),
            },
        );
        // The edit before its target, then the target, then the edit again.
        let mut c = Conversation::direct(&a, &b);
        assert_eq!(c.insert(&a, da, edit.clone()), Ok(Inserted::Waiting));
        assert_eq!(c.insert(&a, da, edit.clone()), Ok(Inserted::Duplicate));
        assert!(matches!(
            c.insert(&a, da, text(conv.clone(), 1, 1, "hi")),
            Ok(Inserted::New(_))
        ));
        assert_eq!(texts(&c), vec!["hi there"]);
        assert!(c.get(MessageId([1; 16])).unwrap().edited);
        assert_eq!(c.insert(&a, da, edit), Ok(Inserted::Duplicate));
        assert_eq!(
            c.insert(&a, da, delete),
            Ok(Inserted::Changed(MessageId([1; 16])))
        );
        let e = c.get(MessageId([1; 16])).unwrap();
        assert!(e.deleted);
        assert_eq!(texts(&c), vec![""]);
    }

    #[test]
    fn two_edits_give_the_same_text_whatever_order_they_arrive_in() {
        let (a, b) = (user("alice"), user("bob"));
        let da = DeviceId([1; 16]);
        let to = Target::Direct(b.clone());
        let edit = |id: u8, lamport: u64, t: &str| Item {
            id: MessageId([id; 16]),
            to: to.clone(),
            lamport,
            sent_at: UnixTime(0),
            body: Body::Edit {
                target: MessageId([1; 16]),
                text: t.into(),
            },
        };
        let (first, second) = (edit(2, 2, "first fix"), edit(3, 3, "second fix"));
        for order in [[&first, &second], [&second, &first]] {
            let mut c = Conversation::direct(&a, &b);
            c.insert(&a, da, text(to.clone(), 1, 1, "typo")).unwrap();
            for e in order {
                c.insert(&a, da, e.clone()).unwrap();
            }
            assert_eq!(texts(&c), vec!["second fix"]);
        }
        // Group changes have no place in a one-to-one conversation; a clock at its end stays.
        let mut c = Conversation::direct(&a, &b);
        let leave = Item {
            id: MessageId([9; 16]),
            to: to.clone(),
            lamport: u64::MAX,
            sent_at: UnixTime(0),
            body: Body::GroupLeave,
        };
        assert_eq!(c.insert(&a, da, leave), Err(LogError::NotAGroup));
        c.insert(&a, da, text(to, 4, u64::MAX, "late")).unwrap();
        assert_eq!(c.next_lamport(), u64::MAX);
    }

    #[test]
    fn group_membership_follows_its_changes() {
        let (a, b, c3, d) = (user("alice"), user("bob"), user("carol"), user("dave"));
        let id = ConversationId([5; 16]);
        let mut g = Conversation::group(
            id,
            "climbing".into(),
            [a.clone(), b.clone(), c3.clone()].into_iter().collect(),
        );
        let op = |n: u8, lamport: u64, body: Body| Item {
            id: MessageId([n; 16]),
            to: Target::Group(id),
            lamport,
            sent_at: UnixTime(0),
            body,
        };
        let da = DeviceId([1; 16]);
        g.insert(
            &a,
            da,
            op(
                1,
                1,
                Body::GroupAdd {
                    users: vec![d.clone()],
                },
            ),
        )
        .unwrap();
        g.insert(
            &a,
            da,
            op(
                2,
                2,
                Body::GroupRemove {
                    users: vec![b.clone()],
                },
            ),
        )
        .unwrap();
        g.insert(
            &a,
            da,
            op(
                3,
                3,
                Body::GroupRename {
                    name: "bouldering".into(),
                },
            ),
        )
        .unwrap();
        assert_eq!(
            g.kind(),
            &Kind::Group {
                name: "bouldering".into()
            }
        );
        assert!(g.members().contains(&d) && !g.members().contains(&b));
        assert_eq!(
            g.insert(
                &b,
                DeviceId([2; 16]),
                text(Target::Group(id), 4, 4, "still here?")
            ),
            Err(LogError::NotMember(b.clone()))
        );
        g.insert(&c3, DeviceId([3; 16]), op(5, 4, Body::GroupLeave))
            .unwrap();
        assert!(!g.members().contains(&c3));
    }
}
