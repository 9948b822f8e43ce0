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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use natter_core::chat::MessageId;
use natter_core::crypto::{DeviceId, UnixTime, UserName};
use natter_core::endpoint::ConnId;
use natter_core::overlay::PresenceRecord;
use natter_core::wire::message::{chat_pieces, Message};
use natter_core::wire::{DecodeError, Reader};

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
/// The largest envelope kept (what the largest message seals to, with the sender's keys).
const MAX_ENVELOPE: usize = natter_core::chat::channel::MAX_CIPHERTEXT + 1024;
const SAVE_VERSION: u8 = 1;
/// How long an envelope is kept.
pub(crate) const KEEP_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most envelopes being put together at once (the oldest is given up past it).
const MAX_PARTIALS: usize = 1024;
/// An envelope being put together is given up after this long without a new piece.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// A device is sent what waits for it at most this often through the same super node.
const DELIVER_EVERY: Duration = Duration::from_secs(5);
/// What still waits for a device that is online is sent again this often.
const REDELIVER_EVERY: Duration = Duration::from_secs(30);
/// A device's "online" record counts this long (records are refreshed every 30 minutes).
const ONLINE_FRESH: Duration = Duration::from_secs(35 * 60);
/// Deliveries remembered with the super node they came from.
const MAX_DELIVERING: usize = 4096;
/// Most envelopes sent to a device at once (the rest follow once these are acknowledged).
const DELIVER_AT_ONCE: usize = 16;

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
    /// When each device was last sent what waits for it, and through which super node.
    delivered: BTreeMap<DeviceId, (Instant, std::net::SocketAddr)>,
    /// Deliveries we forwarded to our clients: the session of the mailbox's super node each
    /// came on, so that the client's acknowledgement reaches it even when the ring changed
    /// since it kept the message (bounded; the oldest forgotten first).
    delivering: BTreeMap<(DeviceId, MessageId), ConnId>,
    /// Of each device with a mailbox here: the newest "online" record seen (its sequence,
    /// the super node it names, when it came). Older and replayed records change nothing.
    online: BTreeMap<DeviceId, (u64, std::net::SocketAddr, Instant)>,
    stored: u64,
    refused: u64,
    /// Bumped whenever an envelope is kept or let go (the runtime saves then).
    generation: u64,
    /// No envelope expires before this (the earliest expiry when last computed: the timer
    /// reads it instead of scanning every envelope).
    sweep_at: Option<Instant>,
    unreadable: bool,
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
    /// The mailboxes an earlier run saved could not be read (they were started empty).
    pub unreadable: bool,
}

impl Mailboxes {
    /// What the mailboxes hold.
    pub fn stats(&self) -> MailboxStats {
        MailboxStats {
            kept: self.boxes.values().map(BTreeMap::len).sum(),
            bytes: self.bytes,
            stored: self.stored,
            refused: self.refused,
            unreadable: self.unreadable,
        }
    }

    /// Empty mailboxes, started because the saved ones could not be read.
    pub fn unreadable() -> Self {
        Self {
            unreadable: true,
            ..Self::default()
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
            forwarded,
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
        // From a device (ours, or a client's): forward to the mailbox's super nodes. From a
        // super node: keep it, never forward it again.
        let from_client = !forwarded && conn.is_none_or(|c| role.is_client(c));
        if *forwarded {
            // Only a super node of the ring forwards, and only to the user's mailboxes.
            let replica = index
                .ring()
                .successors(Key::of_user(user), MAILBOX_REPLICAS)
                .iter()
                .any(|r| r.addr == cx.cfg.listen);
            if replica && conn.is_some_and(|c| !role.is_client(c)) {
                self.piece(cx.now, user, sender, *to, *id, *i, *count, data);
            } else {
                cx.out.stats.overlay_dropped += 1;
            }
        } else if from_client {
            let replicas = index
                .ring()
                .successors(Key::of_user(user), MAILBOX_REPLICAS);
            for r in replicas {
                if r.addr == cx.cfg.listen {
                    self.piece(cx.now, user, sender, *to, *id, *i, *count, data);
                } else {
                    let put = Message::MailboxPut {
                        forwarded: true,
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
            cx.out.stats.overlay_dropped += 1;
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
        if envelope.len() > MAX_ENVELOPE {
            self.refused += 1;
            return;
        }
        let held = self.boxes.get(&to).map_or(0, BTreeMap::len);
        let sent = self.per_sender.get(&p.sender).copied().unwrap_or(0);
        if held >= MAX_PER_DEVICE
            || sent >= MAX_PER_SENDER
            || self.bytes + envelope.len() > MAX_BYTES
        {
            self.refused += 1;
            return;
        }
        self.stored += 1;
        self.keep(to, id, p.sender, envelope, now + KEEP_FOR);
        // Arrived while the device is online: the next check sends it.
        if let Some((t, _)) = self.delivered.get_mut(&to) {
            *t = now.checked_sub(REDELIVER_EVERY).unwrap_or(*t);
        }
    }

    /// A verified record reached us: when it is the newest of its device, says it is online
    /// and something waits for it, send that to the super node the record names.
    pub fn record(
        &mut self,
        cx: &mut Cx<'_>,
        index: &mut IndexPart,
        role: &SuperNodeRole,
        record: &PresenceRecord,
    ) {
        let device = record.device();
        if !self.boxes.contains_key(&device) {
            return;
        }
        if self
            .online
            .get(&device)
            .is_some_and(|(seq, _, _)| *seq >= record.sequence)
        {
            // Replayed or stale: it must not steer (or repeat) a delivery.
            return;
        }
        let Some(sn) = record
            .super_nodes
            .first()
            .copied()
            .filter(|_| record.online)
        else {
            self.online.remove(&device);
            return;
        };
        self.online.insert(device, (record.sequence, sn, cx.now));
        self.deliver_to(cx, index, role, device);
    }

    /// Send what waits for `device` to the super node its newest record names, unless that
    /// was done there less than [`DELIVER_EVERY`] ago.
    fn deliver_to(
        &mut self,
        cx: &mut Cx<'_>,
        index: &mut IndexPart,
        role: &SuperNodeRole,
        device: DeviceId,
    ) {
        let Some((_, sn, _)) = self.online.get(&device).copied() else {
            return;
        };
        if self
            .delivered
            .get(&device)
            .is_some_and(|(t, via)| *via == sn && cx.now < *t + DELIVER_EVERY)
        {
            return;
        }
        let Some(b) = self.boxes.get(&device) else {
            return;
        };
        self.delivered.insert(device, (cx.now, sn));
        let pieces: Vec<Message<'static>> = b
            .iter()
            .take(DELIVER_AT_ONCE)
            .flat_map(|(id, s)| deliver_pieces(device, *id, &s.envelope))
            .collect();
        if sn == cx.cfg.listen {
            let client = role.client_of(device);
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

    /// Devices whose newest record says online and that still have something waiting are
    /// sent it again every [`REDELIVER_EVERY`] (pieces lost on the way, messages that came
    /// after the device did), for as long as their record is fresh.
    pub fn redeliver(&mut self, cx: &mut Cx<'_>, index: &mut IndexPart, role: &SuperNodeRole) {
        let now = cx.now;
        self.online.retain(|_, (_, _, at)| now < *at + ONLINE_FRESH);
        let due: Vec<DeviceId> = self
            .online
            .keys()
            .filter(|d| self.boxes.contains_key(*d))
            .filter(|d| {
                self.delivered
                    .get(*d)
                    .is_none_or(|(t, _)| now >= *t + REDELIVER_EVERY)
            })
            .copied()
            .collect();
        for device in due {
            self.delivered.remove(&device);
            self.deliver_to(cx, index, role, device);
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
        if role.is_client(conn) {
            // From a super node (a mailbox's), never from a client of ours.
            cx.out.stats.overlay_dropped += 1;
            return;
        }
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
        match role.client_of(*to) {
            Some(c) => {
                if let Message::MailboxDeliver { id, .. } = msg {
                    if self.delivering.len() >= MAX_DELIVERING {
                        self.delivering.pop_first();
                    }
                    self.delivering.insert((*to, *id), conn);
                }
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
        let Message::MailboxAck {
            forwarded,
            user,
            device,
            ids,
        } = msg
        else {
            return;
        };
        let from_client = !forwarded && conn.is_none_or(|c| role.is_client(c));
        if *forwarded {
            // A super node passes a device's acknowledgement on (it checked the device's own
            // session); a client of ours may not send one as if forwarded. (Message ids are
            // random and seen only by the super nodes that carry them: nobody else can name
            // what to delete.)
            if conn.is_some_and(|c| !role.is_client(c)) {
                self.delete(*device, ids);
            } else {
                cx.out.stats.overlay_dropped += 1;
            }
        } else if from_client {
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
            let ack = Message::MailboxAck {
                forwarded: true,
                user: user.clone(),
                device: *device,
                ids: ids.clone(),
            };
            for r in index
                .ring()
                .successors(Key::of_user(user), MAILBOX_REPLICAS)
            {
                if r.addr == cx.cfg.listen {
                    self.delete(*device, ids);
                } else {
                    index.send_to_super_node(cx, r, ack.clone());
                }
            }
            // And to the super nodes that delivered them, wherever the ring puts them now.
            let via: BTreeSet<ConnId> = ids
                .iter()
                .filter_map(|id| self.delivering.remove(&(*device, *id)))
                .collect();
            for c in via {
                let _ = cx.sessions.send(cx.now, c, &ack);
            }
        } else {
            cx.out.stats.overlay_dropped += 1;
        }
    }

    /// Keep an envelope (its bounds checked by the caller).
    fn keep(
        &mut self,
        to: DeviceId,
        id: MessageId,
        sender: DeviceId,
        envelope: Vec<u8>,
        until: Instant,
    ) {
        self.bytes += envelope.len();
        *self.per_sender.entry(sender).or_default() += 1;
        self.generation += 1;
        self.sweep_at = Some(self.sweep_at.map_or(until, |t| t.min(until)));
        self.boxes.entry(to).or_default().insert(
            id,
            Stored {
                envelope,
                sender,
                until,
            },
        );
    }

    /// Changes with every envelope kept or let go.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every envelope, encoded to be kept on disk (`now` and `wall`: the same moment, on the
    /// node's clock and the wall clock: expiries are stored in wall-clock seconds).
    pub fn save(&self, now: Instant, wall: UnixTime) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(self.bytes + 64 * self.stats().kept + 8);
        out.put_u8(SAVE_VERSION);
        out.put_u32(self.stats().kept as u32);
        for (to, b) in &self.boxes {
            for (id, s) in b {
                out.put_slice(&to.0);
                out.put_slice(&id.0);
                out.put_slice(&s.sender.0);
                let left = s.until.saturating_duration_since(now).as_secs();
                out.put_u64(wall.0.saturating_add(left));
                out.put_u32(s.envelope.len() as u32);
                out.put_slice(&s.envelope);
            }
        }
        out.to_vec()
    }

    /// Mailboxes saved by [`Mailboxes::save`], with what expired meanwhile left out and the
    /// bounds applied again.
    pub fn restore(saved: &[u8], now: Instant, wall: UnixTime) -> Result<Self, DecodeError> {
        let mut r = Reader::new(saved);
        if r.u8()? != SAVE_VERSION {
            return Err(DecodeError::Invalid("mailbox file version"));
        }
        let n = r.u32()? as usize;
        let mut m = Self::default();
        for _ in 0..n {
            let to = DeviceId(r.array()?);
            let id = MessageId(r.array()?);
            let sender = DeviceId(r.array()?);
            let until_wall = r.u64()?;
            let len = r.u32()? as usize;
            if len > MAX_ENVELOPE {
                return Err(DecodeError::TooLong {
                    what: "kept envelope",
                    len,
                    max: MAX_ENVELOPE,
                });
            }
            let envelope = r.take(len)?.to_vec();
            if until_wall <= wall.0 {
                continue;
            }
            let fits = m.boxes.get(&to).map_or(0, BTreeMap::len) < MAX_PER_DEVICE
                && m.per_sender.get(&sender).copied().unwrap_or(0) < MAX_PER_SENDER
                && m.bytes + envelope.len() <= MAX_BYTES;
            if fits {
                let until = now + Duration::from_secs(until_wall - wall.0).min(KEEP_FOR);
                m.keep(to, id, sender, envelope, until);
            }
        }
        r.finish()?;
        Ok(m)
    }

    fn delete(&mut self, device: DeviceId, ids: &[MessageId]) {
        let Some(b) = self.boxes.get_mut(&device) else {
            return;
        };
        for id in ids {
            if let Some(s) = b.remove(id) {
                self.generation += 1;
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
            self.online.remove(&device);
        }
    }

    /// Drop what expired and pieces given up.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.partials.retain(|_, p| now < p.last + PARTIAL_TIMEOUT);
        if self.sweep_at.is_none_or(|t| now < t) {
            return;
        }
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
        self.sweep_at = self
            .boxes
            .values()
            .flat_map(|b| b.values().map(|s| s.until))
            .min();
    }

    /// When the mailboxes next want the timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let partial = self
            .partials
            .values()
            .map(|p| p.last + PARTIAL_TIMEOUT)
            .min();
        let expiry = self.sweep_at;
        let redeliver = self
            .online
            .keys()
            .filter(|d| self.boxes.contains_key(*d))
            .filter_map(|d| self.delivered.get(d).map(|(t, _)| *t + REDELIVER_EVERY))
            .min();
        [partial, expiry, redeliver].into_iter().flatten().min()
    }
}

/// The pieces of a kept envelope for `to`.
fn deliver_pieces(to: DeviceId, id: MessageId, envelope: &[u8]) -> Vec<Message<'static>> {
    chat_pieces(envelope)
        .into_iter()
        .map(|(index, count, data)| Message::MailboxDeliver {
            to,
            id,
            index,
            count,
            data: data.to_vec(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_survive_a_restart_and_what_expired_meanwhile_does_not() {
        let now = Instant::now();
        let wall = UnixTime(1_767_225_600);
        let bob = UserName::parse("bob").unwrap();
        let mut m = Mailboxes::default();
        let (to, sender) = (DeviceId([1; 16]), DeviceId([2; 16]));
        // A two-piece envelope, then a one-piece one kept a day less.
        m.piece(now, &bob, sender, to, MessageId([1; 16]), 0, 2, &[7; 1024]);
        m.piece(now, &bob, sender, to, MessageId([1; 16]), 1, 2, &[8; 10]);
        let later = now + Duration::from_secs(24 * 3600);
        m.piece(later, &bob, sender, to, MessageId([2; 16]), 0, 1, b"short");
        assert_eq!(m.stats().kept, 2);
        let generation = m.generation();
        let saved = m.save(later, UnixTime(wall.0 + 24 * 3600));
        // Read back at once: the same envelopes.
        let back = Mailboxes::restore(&saved, later, UnixTime(wall.0 + 24 * 3600)).unwrap();
        assert_eq!(back.stats().kept, 2);
        assert_eq!(back.stats().bytes, m.stats().bytes);
        // 29.5 days after the first was kept: it expired while the node was down.
        let t = UnixTime(wall.0 + 29 * 24 * 3600 + 12 * 3600);
        let back = Mailboxes::restore(&saved, now, t).unwrap();
        assert_eq!(back.stats().kept, 2);
        let t = UnixTime(wall.0 + 30 * 24 * 3600 + 1);
        let back = Mailboxes::restore(&saved, now, t).unwrap();
        assert_eq!(back.stats().kept, 1);
        // A damaged file is refused, not half read.
        assert!(Mailboxes::restore(&saved[..saved.len() - 1], now, wall).is_err());
        assert!(Mailboxes::restore(&[9], now, wall).is_err());
        // Letting one go changes the generation (the runtime saves again).
        m.delete(to, &[MessageId([2; 16])]);
        assert_ne!(m.generation(), generation);
        assert_eq!(m.stats().kept, 1);
    }

    #[test]
    fn a_flood_is_bounded_per_sender_and_never_pushes_others_out() {
        let now = Instant::now();
        let bob = UserName::parse("bob").unwrap();
        let mut m = Mailboxes::default();
        let (to, flooder, friend) = (DeviceId([1; 16]), DeviceId([6; 16]), DeviceId([7; 16]));
        for n in 0..(MAX_PER_DEVICE as u32 + 10) {
            let mut id = [0; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            m.piece(now, &bob, flooder, to, MessageId(id), 0, 1, b"spam");
        }
        assert_eq!(m.stats().kept, MAX_PER_DEVICE);
        assert_eq!(m.stats().refused, 10);
        // Another device's mailbox is untouched by it.
        m.piece(
            now,
            &bob,
            friend,
            DeviceId([3; 16]),
            MessageId([9; 16]),
            0,
            1,
            b"hi",
        );
        assert_eq!(m.stats().kept, MAX_PER_DEVICE + 1);
    }
}
