//! Mailboxes: sealed chat messages kept by super nodes for devices that are offline.
//!
//! A user's mailbox lives on the first [`MAILBOX_REPLICAS`] ring successors of the user's
//! index key, the super nodes that also hold the user's presence records. A device that
//! writes to an offline device sends the pieces of the sealed envelope to its own super
//! node ([`Message::MailboxPut`]), which forwards them to those super nodes and answers
//! [`Message::MailboxStored`]. A mailbox super node puts the pieces together and keeps the
//! envelope (only ciphertext, the recipient device, the id and the size); when a verified
//! "online" record of the device reaches it (the device published, which the index sends to
//! these very super nodes), it sends every envelope waiting for the device, in pieces, to the
//! super node the record names ([`Message::MailboxDeliver`]), which forwards them to its
//! client. The device answers [`Message::MailboxAck`] to its super node, which passes it on
//! to the mailbox's super nodes: they delete what it names.
//!
//! Bounds, so that neither a flood from one sender nor one under many names fills a super
//! node or pushes out others' messages: per recipient device [`MAX_PER_DEVICE`] envelopes,
//! per sending device [`MAX_PER_SENDER`], in all [`MAX_BYTES`] bytes; past a bound a new
//! envelope is refused (never an old one dropped). Envelopes are kept [`KEEP_FOR`] (30 days).
//! Kept in memory for now: a super node that restarts loses its share (the other replicas
//! keep theirs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use natter_core::chat::MessageId;
use natter_core::crypto::{DeviceId, UserName};
use natter_core::endpoint::ConnId;
use natter_core::overlay::PresenceRecord;
use natter_core::wire::message::{Message, MAX_CHAT_CHUNK};

use super::super::parts::{Cx, Notice, PartId};
use super::index::IndexPart;
use crate::dht::Key;
use crate::supernode::SuperNodeRole;

/// Super nodes that keep a user's mailbox.
pub(crate) const MAILBOX_REPLICAS: usize = 3;
/// Most envelopes kept for one device.
pub(crate) const MAX_PER_DEVICE: usize = 1000;
/// Most envelopes kept from one sending device (for every recipient).
pub(crate) const MAX_PER_SENDER: usize = 2000;
/// Most bytes kept in all.
pub(crate) const MAX_BYTES: usize = 256 * 1024 * 1024;
/// How long an envelope is kept.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most envelopes being put together at once (the oldest is given up past it).
const MAX_PARTIALS: usize = 1024;
/// An envelope being put together is given up after this long without a new piece.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// A device is sent what waits for it at most this often (each of its records triggers it).
const DELIVER_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Stored {
    envelope: Vec<u8>,
    sender: DeviceId,
    until: Instant,
}

#[derive(Debug)]
struct Partial {
    user: UserName,
    sender: DeviceId,
    pieces: Vec<Option<Vec<u8>>>,
    have: usize,
    last: Instant,
}

/// A super node's mailboxes: see the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct Mailboxes {
    /// Envelopes by recipient device, then id.
    boxes: BTreeMap<DeviceId, BTreeMap<MessageId, Stored>>,
    /// Envelopes kept per sending device.
    per_sender: BTreeMap<DeviceId, usize>,
    bytes: usize,
    partials: BTreeMap<(DeviceId, MessageId), Partial>,
    /// When each device was last sent what waits for it.
    delivered: BTreeMap<DeviceId, Instant>,
    stored: u64,
    refused: u64,
}

/// What a super node's mailboxes hold ([`crate::node::Node::mailbox_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxStats {
    /// Envelopes kept now.
    pub kept: usize,
    /// Their bytes.
    pub bytes: usize,
    /// Envelopes taken since the role was taken.
    pub stored: u64,
    /// Envelopes refused past a bound.
    pub refused: u64,
}

impl Mailboxes {
    /// What the mailboxes hold.
    pub fn stats(&self) -> MailboxStats {
        MailboxStats {
            kept: self.boxes.values().map(BTreeMap::len).sum(),
            bytes: self.bytes,
            stored: self.stored,
            refused: self.refused,
        }
    }

    /// A piece to keep, on session `conn` (`None`: from our own chat). From a client: forward
    /// it to the mailbox's super nodes (keeping it too when we are one) and tell the client it
    /// is stored. From a super node: keep it.
    pub fn put(
        &mut self,
        cx: &mut Cx<'_>,
        index: &mut IndexPart,
        role: &SuperNodeRole,
        conn: Option<ConnId>,
        msg: &Message<'_>,
    ) {
        let Message::MailboxPut {
            user,
            to,
            id,
            index: i,
            count,
            data,
        } = msg
        else {
            return;
        };
        let me = cx.cfg.identity.device.device_id();
        let sender = match conn {
            Some(c) => match cx.sessions.view().peer(c) {
                Some(p) => p.certificate.device,
                None => return,
            },
            None => me,
        };
        let from_client = conn.is_none_or(|c| role.clients().any(|(k, _)| *k == c));
        if from_client {
            let replicas = index
                .ring()
                .successors(Key::of_user(user), MAILBOX_REPLICAS);
            for r in replicas {
                if r.addr == cx.cfg.listen {
                    self.piece(cx.now, user, sender, *to, *id, *i, *count, data);
                } else {
                    let put = Message::MailboxPut {
                        user: user.clone(),
                        to: *to,
                        id: *id,
                        index: *i,
                        count: *count,
                        data: data.clone(),
                    };
                    index.send_to_super_node(cx, r, put);
                }
            }
            if *i + 1 == *count {
                let stored = Message::MailboxStored { to: *to, id: *id };
                match conn {
                    Some(c) => {
                        let _ = cx.sessions.send(cx.now, c, &stored);
                    }
                    None => cx.out.notify(PartId::Chat, encoded(&stored)),
                }
            }
        } else {
            // From another super node: the pieces of a client of theirs (the session's peer
            // is that super node; the sender device is not known here, so the quota counts
            // the forwarding super node).
            self.piece(cx.now, user, sender, *to, *id, *i, *count, data);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn piece(
        &mut self,
        now: Instant,
        user: &UserName,
        sender: DeviceId,
        to: DeviceId,
        id: MessageId,
        index: u8,
        count: u8,
        data: &[u8],
    ) {
        if self.boxes.get(&to).is_some_and(|b| b.contains_key(&id)) {
            return;
        }
        let key = (to, id);
        if !self.partials.contains_key(&key) && self.partials.len() >= MAX_PARTIALS {
            let oldest = self
                .partials
                .iter()
                .min_by_key(|(_, p)| p.last)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.partials.remove(&k);
            }
        }
        let p = self.partials.entry(key).or_insert_with(|| Partial {
            user: user.clone(),
            sender,
            pieces: vec![None; usize::from(count)],
            have: 0,
            last: now,
        });
        if p.pieces.len() != usize::from(count) || &p.user != user {
            return;
        }
        p.last = now;
        let slot = &mut p.pieces[usize::from(index)];
        if slot.is_none() {
            *slot = Some(data.to_vec());
            p.have += 1;
        }
        if p.have < p.pieces.len() {
            return;
        }
        let Some(p) = self.partials.remove(&key) else {
            return;
        };
        let envelope: Vec<u8> = p.pieces.into_iter().flatten().flatten().collect();
        let held = self.boxes.get(&to).map_or(0, BTreeMap::len);
        let sent = self.per_sender.get(&p.sender).copied().unwrap_or(0);
        if held >= MAX_PER_DEVICE
            || sent >= MAX_PER_SENDER
            || self.bytes + envelope.len() > MAX_BYTES
        {
            self.refused += 1;
            return;
        }
        self.bytes += envelope.len();
        *self.per_sender.entry(p.sender).or_default() += 1;
        self.stored += 1;
        self.boxes.entry(to).or_default().insert(
            id,
            Stored {
                envelope,
                sender: p.sender,
                until: now + KEEP_FOR,
            },
        );
        // Arrived while the device is online: the next record (or a check) delivers it.
        self.delivered.remove(&to);
    }

    /// A verified record reached us: when it says its device is online and something waits
    /// for it, send that to the super node the record names.
    pub fn record(
        &mut self,
        cx: &mut Cx<'_>,
        index: &mut IndexPart,
        role: &SuperNodeRole,
        record: &PresenceRecord,
    ) {
        let device = record.device();
        if !record.online || !self.boxes.contains_key(&device) {
            return;
        }
        if self
            .delivered
            .get(&device)
            .is_some_and(|t| cx.now < *t + DELIVER_EVERY)
        {
            return;
        }
        let Some(sn) = record.super_nodes.first().copied() else {
            return;
        };
        self.delivered.insert(device, cx.now);
        let pieces: Vec<Message<'static>> = self.boxes[&device]
            .iter()
            .flat_map(|(id, s)| deliver_pieces(device, *id, &s.envelope))
            .collect();
        if sn == cx.cfg.listen {
            let client = role
                .clients()
                .find(|(_, c)| c.device == device)
                .map(|(c, _)| *c);
            match client {
                Some(c) => {
                    for p in &pieces {
                        let _ = cx.sessions.send(cx.now, c, p);
                    }
                }
                None if device == cx.cfg.identity.device.device_id() => {
                    for p in &pieces {
                        cx.out.notify(PartId::Chat, encoded(p));
                    }
                }
                None => {}
            }
            return;
        }
        let Some(entry) = index.ring().at(sn).copied() else {
            return;
        };
        for p in pieces {
            index.send_to_super_node(cx, entry, p);
        }
    }

    /// A piece of a waiting message from a mailbox's super node, on session `conn`: for one
    /// of our clients (or us).
    pub fn deliver(
        &mut self,
        cx: &mut Cx<'_>,
        role: &SuperNodeRole,
        conn: ConnId,
        msg: &Message<'_>,
    ) {
        let Message::MailboxDeliver { to, .. } = msg else {
            return;
        };
        if *to == cx.cfg.identity.device.device_id() {
            cx.out.notify(
                PartId::Chat,
                Notice::ChatIn {
                    conn: Some(conn),
                    message: encoded_bytes(msg),
                },
            );
            return;
        }
        match role
            .clients()
            .find(|(_, c)| c.device == *to)
            .map(|(c, _)| *c)
        {
            Some(c) => {
                let _ = cx.sessions.send(cx.now, c, msg);
            }
            None => cx.out.stats.overlay_dropped += 1,
        }
    }

    /// An acknowledgement on session `conn` (`None`: our own chat's): from a client about its
    /// own device, passed on to the mailbox's super nodes; from a super node, delete what it
    /// names.
    pub fn ack(
        &mut self,
        cx: &mut Cx<'_>,
        index: &mut IndexPart,
        role: &SuperNodeRole,
        conn: Option<ConnId>,
        msg: &Message<'_>,
    ) {
        let Message::MailboxAck { user, device, ids } = msg else {
            return;
        };
        let from_client = conn.is_none_or(|c| role.clients().any(|(k, _)| *k == c));
        if from_client {
            // Only a device may empty its own mailbox.
            let own = match conn {
                Some(c) => cx.sessions.view().peer(c).is_some_and(|p| {
                    p.certificate.device == *device && &p.certificate.user == user
                }),
                None => *device == cx.cfg.identity.device.device_id(),
            };
            if !own {
                cx.out.stats.overlay_dropped += 1;
                return;
            }
            for r in index
                .ring()
                .successors(Key::of_user(user), MAILBOX_REPLICAS)
            {
                if r.addr == cx.cfg.listen {
                    self.delete(*device, ids);
                } else {
                    let ack = Message::MailboxAck {
                        user: user.clone(),
                        device: *device,
                        ids: ids.clone(),
                    };
                    index.send_to_super_node(cx, r, ack);
                }
            }
        } else {
            self.delete(*device, ids);
        }
    }

    fn delete(&mut self, device: DeviceId, ids: &[MessageId]) {
        let Some(b) = self.boxes.get_mut(&device) else {
            return;
        };
        for id in ids {
            if let Some(s) = b.remove(id) {
                self.bytes -= s.envelope.len();
                if let Some(n) = self.per_sender.get_mut(&s.sender) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_sender.remove(&s.sender);
                    }
                }
            }
        }
        if b.is_empty() {
            self.boxes.remove(&device);
            self.delivered.remove(&device);
        }
    }

    /// Drop what expired and pieces given up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.partials.retain(|_, p| now < p.last + PARTIAL_TIMEOUT);
        let expired: Vec<(DeviceId, MessageId)> = self
            .boxes
            .iter()
            .flat_map(|(d, b)| {
                b.iter()
                    .filter(|(_, s)| now >= s.until)
                    .map(move |(id, _)| (*d, *id))
            })
            .collect();
        for (d, id) in expired {
            self.delete(d, &[id]);
        }
    }

    /// When the mailboxes next want the timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let partial = self
            .partials
            .values()
            .map(|p| p.last + PARTIAL_TIMEOUT)
            .min();
        let expiry = self
            .boxes
            .values()
            .flat_map(|b| b.values().map(|s| s.until))
            .min();
        [partial, expiry].into_iter().flatten().min()
    }
}

/// The pieces of a kept envelope for `to`.
fn deliver_pieces(to: DeviceId, id: MessageId, envelope: &[u8]) -> Vec<Message<'static>> {
    let count = envelope.len().div_ceil(MAX_CHAT_CHUNK).max(1);
    (0..count)
        .map(|i| {
            let start = i * MAX_CHAT_CHUNK;
            let end = (start + MAX_CHAT_CHUNK).min(envelope.len());
            Message::MailboxDeliver {
                to,
                id,
                index: i as u8,
                count: count as u8,
                data: envelope[start.min(end)..end].to_vec(),
            }
        })
        .collect()
}

fn encoded_bytes(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = bytes::BytesMut::with_capacity(1100);
    msg.encode(&mut buf);
    buf.to_vec()
}

/// A notice to our own chat carrying `msg` (on no session).
fn encoded(msg: &Message<'_>) -> Notice {
    Notice::ChatIn {
        conn: None,
        message: encoded_bytes(msg),
    }
}
