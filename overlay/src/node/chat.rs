//! Chat, the node's part that carries sealed messages between devices (the messages
//! themselves, their order and history, are `natter_core::chat`'s and the application's).
//!
//! **Sending.** A message for some users is sealed once for every device of theirs that the
//! global index knows with chat keys, and for every other device of our own user (so each of
//! our devices holds what we sent). Each copy is an [`Envelope`] cut in
//! [`Message::ChatChunk`] pieces and sent to the first super node its device's record names:
//! over our link when it is one of our super nodes, handed to our own super-node role when
//! that is us, else over the session the calls part keeps with that super node
//! ([`Notice::PostVia`]). A device that a message arrived from is also reachable back through
//! the link it came on: its super node holds the sender's session. A copy is sent again, whole,
//! after 1, 2, 4... up to 30 seconds until its device's **delivery receipt** comes back: a
//! [`Body::Receipt`] sealed in the same channel, which no super node can forge. After three
//! sends without one, or when a super node says it cannot reach the device
//! ([`Message::ChatUnreachable`]), the user is looked up again.
//!
//! **Receiving.** Pieces are put together by message id (at most [`MAX_PARTIALS`] messages at
//! once, each given up after [`PARTIAL_TIMEOUT`] without a new piece), the envelope opened
//! (see `natter_core::chat::channel` for everything refused), and what it says reported as
//! [`ChatEvent`]s. Every stored message (not a receipt, not typing) is answered with a
//! delivery receipt, again when a copy arrives twice: the first receipt may have been lost.
//!
//! Offline delivery (mailboxes on super nodes) comes next: for now a message for a device
//! that is not online waits here, and the user is looked up again every 30 seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_core::chat::keys::DeviceKeys;
use natter_core::chat::{
    Body, Channels, ChatError, Envelope, Item, MessageId, Opened, ReceiptKind, Target,
};
use natter_core::crypto::{DeviceId, UnixTime, UserName};
use natter_core::endpoint::ConnId;
use natter_core::overlay::{SearchOutcome, SearchResult};
use natter_core::rng::Rng;
use natter_core::wire::message::{chat_pieces, Message};

use super::parts::{Cx, Notice, PartId};
use super::{NodeConfig, NodeEvent};

/// A copy is first sent again after this long without its receipt...
const RESEND_FIRST: Duration = Duration::from_secs(1);
/// ...then after twice as long each time, up to this.
const RESEND_MAX: Duration = Duration::from_secs(30);
/// A copy a mailbox took is put there again this often until its receipt comes (a mailbox
/// that lost it takes it again; the device, online again, is sent it straight).
const STORED_RESEND: Duration = Duration::from_secs(300);
/// Sends without a receipt before the device's user is looked up again.
const TRIES_BEFORE_LOOKUP: u32 = 3;
/// How long a user's devices, as the index gave them, are used before asking again.
const DIRECTORY_TTL: Duration = Duration::from_secs(60);
/// A user with messages waiting and no device online is looked up again this often.
const WAITING_RECHECK: Duration = Duration::from_secs(30);
/// Most messages waiting for receipts; a message past it is refused
/// ([`ChatEvent::Failed`]).
pub const MAX_OUTBOX: usize = 1024;
/// Most messages being put together at once; the oldest is given up past it.
pub const MAX_PARTIALS: usize = 256;
/// A message being put together is given up after this long without a new piece.
pub const PARTIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Most messages reported and not yet kept by the application; past it envelopes are left
/// unopened (and sent again by their senders).
pub const MAX_UNACKED: usize = 1024;
/// Users whose devices are remembered from lookups; the oldest answer is forgotten first.
const MAX_DIRECTORY: usize = 4096;
/// Devices remembered with the link their last message came on.
const MAX_HEARD: usize = 4096;

/// What chat reports to the application.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// A message (text, edit, deletion, group change) from one of a user's devices, ours
    /// included. Reported once per device copy that opens: the application's conversation
    /// ([`natter_core::chat::Conversation`]) lets each id in once.
    Received(Box<Opened>),
    /// The message left this device: at least one copy was handed to the network.
    Sent {
        /// The message.
        id: MessageId,
    },
    /// A device of `user` holds the message (its receipt, sealed end to end, came back).
    Delivered {
        /// The message.
        id: MessageId,
        /// Whose device.
        user: UserName,
        /// The device.
        device: DeviceId,
    },
    /// `user` read these messages (a read receipt from one of their devices).
    Read {
        /// The messages.
        ids: Vec<MessageId>,
        /// Who read them.
        user: UserName,
    },
    /// `user` started or stopped typing in the conversation `to` names (as they wrote it).
    Typing {
        /// Who.
        user: UserName,
        /// Where.
        to: Target,
        /// Typing now.
        on: bool,
    },
    /// The message could not be sent at all (too long, or too many messages waiting).
    Failed {
        /// The message.
        id: MessageId,
        /// Why.
        error: String,
    },
}

/// Counters of what chat refused or gave up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatStats {
    /// Envelopes refused when opening (forged, replayed, undecryptable, malformed...).
    pub refused: u64,
    /// Copies that arrived twice (answered with a receipt again, not reported).
    pub duplicates: u64,
    /// Messages from blocked users, dropped without a word.
    pub blocked: u64,
    /// Partly received messages given up (pieces missing too long, or too many at once).
    pub partials_dropped: u64,
    /// Copies sent again.
    pub resent: u64,
    /// Messages not taken because [`MAX_OUTBOX`] wait already (the application keeps them).
    pub outbox_full: u64,
    /// Envelopes left unopened because [`MAX_UNACKED`] messages wait for the application
    /// (their senders send them again).
    pub unacked_full: u64,
}

/// One device's copy of a message we sent.
#[derive(Debug)]
struct Copy {
    user: UserName,
    bytes: Vec<u8>,
    next: Instant,
    tries: u32,
    /// The device was offline: the copy goes to its mailbox.
    mailbox: bool,
    /// A super node took it for the mailbox: not sent again (the receipt comes when the
    /// device opens it).
    stored: bool,
}

/// A message we sent, until every copy's receipt is in.
#[derive(Debug)]
struct Outgoing {
    item: Item,
    /// Users being looked up before their copies are sealed.
    waiting: BTreeSet<UserName>,
    copies: BTreeMap<DeviceId, Copy>,
    /// Receipts already in (a copy is dropped then; a late lookup must not seal it again).
    delivered: BTreeSet<DeviceId>,
    /// Receipts and typing: sent once, never again, no receipt expected.
    once: bool,
    sent: bool,
}

/// A user's devices as the index last gave them.
#[derive(Debug)]
struct Known {
    at: Instant,
    /// Devices with chat keys, the super node each is reachable through, and whether it is
    /// online (an offline one gets its copies through its mailbox).
    devices: Vec<(DeviceKeys, Option<SocketAddr>, bool)>,
}

/// A message being put together.
#[derive(Debug)]
struct Partial {
    pieces: Vec<Option<Vec<u8>>>,
    have: usize,
    last: Instant,
}

/// See the [module documentation](self).
pub(crate) struct Chat {
    channels: Channels,
    rng: Rng,
    me: UserName,
    outbox: BTreeMap<MessageId, Outgoing>,
    directory: BTreeMap<UserName, Known>,
    /// Users being looked up, and when the lookup was asked.
    lookups: BTreeMap<UserName, Instant>,
    partials: BTreeMap<MessageId, Partial>,
    heard_via: BTreeMap<DeviceId, ConnId>,
    blocked: BTreeSet<UserName>,
    /// Devices the login authority revoked: nothing is sealed for them or opened from them.
    revoked: BTreeSet<DeviceId>,
    /// Messages reported to the application and not yet acknowledged by it (see
    /// [`Chat::stored`]): the sending device, and whether the message came from a mailbox.
    unacked: BTreeMap<MessageId, (Opened, bool)>,
    /// The application acknowledges what it keeps ([`NodeConfig::chat_app_receipts`]).
    app_receipts: bool,
    stats: ChatStats,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("channels", &self.channels)
            .field("outbox", &self.outbox.len())
            .field("partials", &self.partials.len())
            .finish_non_exhaustive()
    }
}

impl Chat {
    /// A new chat part with new Olm keys, signed at `wall`.
    pub fn new(cfg: &NodeConfig, seed: [u8; 32], wall: UnixTime) -> Self {
        let mut rng = Rng::from_seed_bytes(seed);
        Self {
            channels: Channels::new(
                &cfg.identity.device,
                cfg.identity.certificate.clone(),
                wall,
                &mut rng,
            ),
            rng,
            me: cfg.identity.certificate.user.clone(),
            outbox: BTreeMap::new(),
            directory: BTreeMap::new(),
            lookups: BTreeMap::new(),
            partials: BTreeMap::new(),
            heard_via: BTreeMap::new(),
            blocked: BTreeSet::new(),
            revoked: BTreeSet::new(),
            unacked: BTreeMap::new(),
            app_receipts: cfg.chat_app_receipts,
            stats: ChatStats::default(),
        }
    }

    /// Our signed chat keys.
    pub fn keys(&self) -> &DeviceKeys {
        self.channels.keys()
    }

    /// Sign our keys again with a renewed certificate.
    pub fn renew(&mut self, cfg: &NodeConfig, wall: UnixTime) {
        self.channels
            .renew(&cfg.identity.device, cfg.identity.certificate.clone(), wall);
    }

    /// The channels, encrypted under `key` ([`Chat::restore`]).
    pub fn save(&self, key: &[u8; 32]) -> Vec<u8> {
        self.channels.save(key)
    }

    /// Take channels saved by [`Chat::save`] back (for the same device).
    pub fn restore(
        &mut self,
        cfg: &NodeConfig,
        saved: &[u8],
        key: &[u8; 32],
    ) -> Result<(), ChatError> {
        let channels = Channels::restore(saved, key)?;
        if channels.keys().device() != cfg.identity.device.device_id() {
            return Err(ChatError::BadState);
        }
        self.channels = channels;
        Ok(())
    }

    /// Messages from these users are dropped without a word.
    pub fn set_blocked(&mut self, users: BTreeSet<UserName>) {
        self.blocked = users;
    }

    /// These devices are revoked: forget them.
    pub fn revoke(&mut self, devices: &[DeviceId]) {
        self.revoked.extend(devices.iter().copied());
        for out in self.outbox.values_mut() {
            out.copies.retain(|d, _| !devices.contains(d));
        }
        for k in self.directory.values_mut() {
            k.devices
                .retain(|(keys, _, _)| !devices.contains(&keys.device()));
        }
        for d in devices {
            self.heard_via.remove(d);
        }
        self.unacked
            .retain(|_, (o, _)| !devices.contains(&o.device));
    }

    /// Counters.
    pub fn stats(&self) -> ChatStats {
        self.stats
    }

    /// A fresh random message id.
    pub fn next_id(&mut self) -> MessageId {
        MessageId::random(&mut self.rng)
    }

    /// Send `item` to every device of `users` and of our own user (but this device). Receipts
    /// and typing go once, and only to `users`.
    pub fn send(&mut self, cx: &mut Cx<'_>, users: BTreeSet<UserName>, item: Item) {
        if let Err(e) = item.check() {
            cx.out.events.push_back(NodeEvent::Chat(ChatEvent::Failed {
                id: item.id,
                error: e.to_string(),
            }));
            return;
        }
        let once = !item.body.is_stored();
        if self.outbox.len() >= MAX_OUTBOX {
            // Not a failure of the message: it stays queued by the application (the client
            // keeps it in its history's queue and hands it over again at its next start).
            self.stats.outbox_full += 1;
            return;
        }
        let mut users = users;
        if !once {
            users.insert(self.me.clone());
        }
        let id = item.id;
        self.outbox.insert(
            id,
            Outgoing {
                item,
                waiting: BTreeSet::new(),
                copies: BTreeMap::new(),
                delivered: BTreeSet::new(),
                once,
                sent: false,
            },
        );
        for user in users {
            self.seal_for(cx, id, &user);
        }
        self.send_due(cx);
        self.tidy(cx);
    }

    /// Drop the messages with nothing left to do: no copy waiting for its receipt, no user
    /// waiting for a lookup. One that no device could be sealed for failed.
    fn tidy(&mut self, cx: &mut Cx<'_>) {
        let done: Vec<MessageId> = self
            .outbox
            .iter()
            .filter(|(_, o)| o.copies.is_empty() && o.waiting.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(o) = self.outbox.remove(&id) else {
                continue;
            };
            if !o.once && !o.sent && o.delivered.is_empty() {
                cx.out.events.push_back(NodeEvent::Chat(ChatEvent::Failed {
                    id,
                    error: "no device of the recipients could be reached".into(),
                }));
            }
        }
    }

    /// Seal message `id` for every known device of `user` without a copy yet, or look the
    /// user up first.
    fn seal_for(&mut self, cx: &mut Cx<'_>, id: MessageId, user: &UserName) {
        let fresh = self
            .directory
            .get(user)
            .is_some_and(|k| cx.now < k.at + DIRECTORY_TTL);
        let Some(out) = self.outbox.get_mut(&id) else {
            return;
        };
        if !fresh {
            out.waiting.insert(user.clone());
            self.look_up(cx, user);
            return;
        }
        let me = cx.cfg.identity.device.device_id();
        let devices = &self.directory[user].devices;
        // A user with no device known (but this one) waits, and is looked up again now and
        // then; our own other devices are best effort; receipts and typing never wait.
        if !out.once && user != &self.me && devices.iter().all(|(k, _, _)| k.device() == me) {
            out.waiting.insert(user.clone());
            return;
        }
        out.waiting.remove(user);
        for (keys, _, online) in devices {
            let device = keys.device();
            if device == me
                || out.copies.contains_key(&device)
                || out.delivered.contains(&device)
                || self.revoked.contains(&device)
                || (out.once && !online)
            {
                continue;
            }
            match self
                .channels
                .seal(&cx.cfg.identity.trusted, cx.wall, keys, &out.item)
            {
                Ok(envelope) => {
                    out.copies.insert(
                        device,
                        Copy {
                            user: user.clone(),
                            bytes: envelope.to_bytes(),
                            next: cx.now,
                            tries: 0,
                            mailbox: !online,
                            stored: false,
                        },
                    );
                }
                Err(_) => self.stats.refused += 1,
            }
        }
    }

    fn look_up(&mut self, cx: &mut Cx<'_>, user: &UserName) {
        if self.lookups.contains_key(user) {
            return;
        }
        self.lookups.insert(user.clone(), cx.now);
        cx.out.notify(
            PartId::Lookup,
            Notice::SearchFor {
                user: user.clone(),
                reply: PartId::Chat,
            },
        );
    }

    /// Send every copy that is due.
    fn send_due(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let mut relook = BTreeSet::new();
        let mut unrouted = BTreeSet::new();
        let mut finished = Vec::new();
        let ids: Vec<MessageId> = self.outbox.keys().copied().collect();
        for id in ids {
            let due: Vec<DeviceId> = self.outbox[&id]
                .copies
                .iter()
                .filter(|(_, c)| c.next <= now)
                .map(|(d, _)| *d)
                .collect();
            for device in due {
                let (bytes, user, tries, mailbox) = {
                    let c = &self.outbox[&id].copies[&device];
                    (c.bytes.clone(), c.user.clone(), c.tries, c.mailbox)
                };
                if tries >= TRIES_BEFORE_LOOKUP && tries % TRIES_BEFORE_LOOKUP == 0 {
                    // No receipt after several sends: the device may have moved.
                    self.directory.remove(&user);
                    self.heard_via.remove(&device);
                    relook.insert(user.clone());
                }
                let sent = if mailbox {
                    to_mailbox(cx, &user, device, id, &bytes)
                } else {
                    self.transmit(cx, &user, device, id, &bytes)
                };
                let out = self.outbox.get_mut(&id).expect("listed");
                if tries > 0 {
                    self.stats.resent += 1;
                }
                let c = out.copies.get_mut(&device).expect("listed");
                c.tries += 1;
                let backoff = if c.stored {
                    STORED_RESEND
                } else {
                    RESEND_FIRST
                        .saturating_mul(1 << (c.tries - 1).min(16))
                        .min(RESEND_MAX)
                };
                c.next = now + backoff;
                if sent && !out.sent {
                    out.sent = true;
                    cx.out
                        .events
                        .push_back(NodeEvent::Chat(ChatEvent::Sent { id }));
                }
                if out.once {
                    // Sent once; one with no way yet waits for a lookup (a few tries).
                    if sent || c.tries >= TRIES_BEFORE_LOOKUP {
                        out.copies.remove(&device);
                    } else {
                        unrouted.insert(user.clone());
                    }
                }
            }
            let out = &self.outbox[&id];
            if out.once && out.copies.is_empty() && out.waiting.is_empty() {
                finished.push(id);
            }
        }
        for id in finished {
            self.outbox.remove(&id);
        }
        for user in relook {
            self.look_up(cx, &user);
        }
        for user in unrouted {
            if !self.directory.contains_key(&user) {
                self.look_up(cx, &user);
            }
        }
    }

    /// Send one copy's pieces towards its device; false when there is no way yet.
    fn transmit(
        &mut self,
        cx: &mut Cx<'_>,
        user: &UserName,
        device: DeviceId,
        id: MessageId,
        bytes: &[u8],
    ) -> bool {
        let sn = self
            .directory
            .get(user)
            .and_then(|k| {
                k.devices
                    .iter()
                    .find(|(keys, _, _)| keys.device() == device)
            })
            .filter(|(_, _, online)| *online)
            .and_then(|(_, sn, _)| *sn);
        let pieces = chunks(device, id, bytes);
        if let Some(sn) = sn {
            if let Some(conn) = cx.facts.link_to(sn) {
                for p in &pieces {
                    send_encoded(cx, conn, p);
                }
            } else if cx.facts.super_node && cx.cfg.listen == sn {
                for p in pieces {
                    cx.out.notify(PartId::SuperNode, Notice::ChatHere(p));
                }
            } else {
                cx.out.notify(
                    PartId::Calls,
                    Notice::PostVia {
                        sn,
                        messages: pieces,
                    },
                );
            }
            return true;
        }
        if let Some(conn) = self.heard_via.get(&device).copied() {
            for p in &pieces {
                send_encoded(cx, conn, p);
            }
            return true;
        }
        false
    }

    /// A lookup of ours ended.
    pub fn on_notice(&mut self, cx: &mut Cx<'_>, notice: Notice) {
        match notice {
            Notice::SearchDone { outcome, .. } => self.found(cx, outcome),
            Notice::ChatIn { conn, message } => {
                if let Ok(msg) = Message::decode(&message) {
                    self.on_chat_message(cx, conn, &msg);
                }
            }
            // Attached (again): users found with nothing online, perhaps because we could not
            // search, are looked up now rather than at the next recheck.
            Notice::FactsChanged if !cx.facts.links.is_empty() || cx.facts.super_node => {
                let waiting: BTreeSet<UserName> = self
                    .outbox
                    .values()
                    .flat_map(|o| o.waiting.iter().cloned())
                    .collect();
                for user in waiting {
                    if self
                        .directory
                        .get(&user)
                        .is_some_and(|k| k.devices.is_empty())
                    {
                        self.directory.remove(&user);
                        self.look_up(cx, &user);
                    }
                }
            }
            _ => {}
        }
    }

    fn found(&mut self, cx: &mut Cx<'_>, outcome: SearchOutcome) {
        let user = outcome.user;
        self.lookups.remove(&user);
        let devices: Vec<(DeviceKeys, Option<SocketAddr>, bool)> = match outcome.result {
            SearchResult::Found(records) => records
                .into_iter()
                .filter(|r| !self.revoked.contains(&r.device()))
                .filter_map(|r| {
                    let sn = r.super_nodes.first().copied();
                    r.device_keys().map(|k| (k, sn, r.online))
                })
                .collect(),
            SearchResult::NotFound | SearchResult::Unavailable => Vec::new(),
        };
        // Copies follow their device: to its mailbox once it is offline, straight to it again
        // once it is online (what a mailbox took stays there: it is delivered from there). A
        // device the user no longer has (revoked, its records expired) gets none.
        let found_any = !devices.is_empty();
        for out in self.outbox.values_mut() {
            out.copies.retain(|device, c| {
                c.user != user
                    || !found_any
                    || devices.iter().any(|(k, _, _)| k.device() == *device)
            });
            for (device, c) in out.copies.iter_mut() {
                if c.user != user {
                    continue;
                }
                if let Some((_, _, online)) = devices.iter().find(|(k, _, _)| k.device() == *device)
                {
                    if c.mailbox == *online {
                        c.mailbox = !*online;
                        c.stored = false;
                        c.next = cx.now;
                    }
                }
            }
        }
        if !self.directory.contains_key(&user) && self.directory.len() >= MAX_DIRECTORY {
            let oldest = self
                .directory
                .iter()
                .min_by_key(|(_, k)| k.at)
                .map(|(u, _)| u.clone());
            if let Some(u) = oldest {
                self.directory.remove(&u);
            }
        }
        self.directory.insert(
            user.clone(),
            Known {
                at: cx.now,
                devices,
            },
        );
        let waiting: Vec<MessageId> = self
            .outbox
            .iter()
            .filter(|(_, o)| o.waiting.contains(&user))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.seal_for(cx, id, &user);
        }
        // Copies whose device is known now (again) go at once.
        for out in self.outbox.values_mut() {
            for c in out.copies.values_mut() {
                if c.user == user && c.tries > 0 {
                    c.next = c.next.min(cx.now);
                }
            }
        }
        self.send_due(cx);
        self.tidy(cx);
    }

    /// A chat message on session `conn`.
    pub fn on_message(&mut self, cx: &mut Cx<'_>, conn: ConnId, msg: &Message<'_>) {
        self.on_chat_message(cx, Some(conn), msg);
    }

    /// A chat message on session `conn` (`None`: from our own super-node role).
    fn on_chat_message(&mut self, cx: &mut Cx<'_>, conn: Option<ConnId>, msg: &Message<'_>) {
        let piece = match msg {
            Message::ChatChunk {
                to,
                id,
                index,
                count,
                data,
            } => Some((*to, *id, *index, *count, *data, false)),
            Message::MailboxDeliver {
                to,
                id,
                index,
                count,
                data,
            } => Some((*to, *id, *index, *count, data.as_slice(), true)),
            _ => None,
        };
        let from_own_super_node = conn.is_none_or(|c| cx.facts.links.iter().any(|l| l.conn == c));
        let mailbox_message = matches!(
            msg,
            Message::MailboxDeliver { .. } | Message::MailboxStored { .. }
        );
        if mailbox_message && !from_own_super_node {
            cx.out.stats.overlay_dropped += 1;
            return;
        }
        if let Some((to, id, index, count, data, from_mailbox)) = piece {
            if to != cx.cfg.identity.device.device_id() {
                cx.out.stats.overlay_dropped += 1;
                return;
            }
            if let Some(bytes) = self.piece(cx.now, id, index, count, data) {
                if self.on_envelope(cx, conn, &bytes, from_mailbox) && from_mailbox {
                    // Held here now (or refused for good): the mailbox may let it go.
                    self.ack_mailbox(cx, id);
                }
            }
            return;
        }
        match msg {
            Message::MailboxStored { to, id } => {
                if let Some(c) = self
                    .outbox
                    .get_mut(id)
                    .and_then(|o| o.copies.get_mut(to))
                    .filter(|c| c.mailbox)
                {
                    // Put again now and then all the same (a mailbox that lost it takes it
                    // again; one that has it ignores it), until the receipt comes.
                    c.stored = true;
                    c.next = cx.now + STORED_RESEND;
                }
            }
            Message::ChatUnreachable { to, id } => {
                let Some(out) = self.outbox.get_mut(id) else {
                    return;
                };
                let Some(user) = out.copies.get(to).map(|c| c.user.clone()) else {
                    return;
                };
                self.heard_via.remove(to);
                self.directory.remove(&user);
                self.look_up(cx, &user);
            }
            _ => cx.out.stats.overlay_dropped += 1,
        }
    }

    /// Add a piece; the whole envelope once every piece is in.
    fn piece(
        &mut self,
        now: Instant,
        id: MessageId,
        index: u8,
        count: u8,
        data: &[u8],
    ) -> Option<Vec<u8>> {
        if count == 1 {
            return Some(data.to_vec());
        }
        if !self.partials.contains_key(&id) && self.partials.len() >= MAX_PARTIALS {
            let oldest = self
                .partials
                .iter()
                .min_by_key(|(_, p)| p.last)
                .map(|(id, _)| *id)?;
            self.partials.remove(&oldest);
            self.stats.partials_dropped += 1;
        }
        let p = self.partials.entry(id).or_insert_with(|| Partial {
            pieces: vec![None; usize::from(count)],
            have: 0,
            last: now,
        });
        if p.pieces.len() != usize::from(count) {
            // Pieces that disagree on the count: start again from this one.
            *p = Partial {
                pieces: vec![None; usize::from(count)],
                have: 0,
                last: now,
            };
        }
        p.last = now;
        let slot = &mut p.pieces[usize::from(index)];
        if slot.is_none() {
            *slot = Some(data.to_vec());
            p.have += 1;
        }
        if p.have < p.pieces.len() {
            return None;
        }
        let p = self.partials.remove(&id)?;
        Some(p.pieces.into_iter().flatten().flatten().collect())
    }

    /// A whole envelope arrived on `conn` (from a mailbox: our super node does not know its
    /// sender, so answers go through the sender's own super node, looked up). Returns true
    /// when a mailbox holding it may let it go now (it opened and needs no acknowledgement
    /// from the application, or was opened and kept before).
    fn on_envelope(
        &mut self,
        cx: &mut Cx<'_>,
        conn: Option<ConnId>,
        bytes: &[u8],
        from_mailbox: bool,
    ) -> bool {
        // A copy that does not open is never acknowledged to a mailbox: it may be a forged or
        // damaged copy of a genuine one, which must stay there.
        let Ok(envelope) = Envelope::decode(bytes) else {
            self.stats.refused += 1;
            return false;
        };
        if self.revoked.contains(&envelope.from) {
            self.stats.refused += 1;
            return false;
        }
        if self.app_receipts
            && self.unacked.len() >= MAX_UNACKED
            && !self.unacked.contains_key(&envelope.id)
        {
            // Not opened (its message key is not used up): its sender sends it again.
            self.stats.unacked_full += 1;
            return false;
        }
        let conn = if from_mailbox {
            self.heard_via.remove(&envelope.from);
            None
        } else {
            conn
        };
        match self
            .channels
            .open(&cx.cfg.identity.trusted, cx.wall, &envelope)
        {
            Ok(opened) => {
                self.remember_link(envelope.from, conn);
                self.opened(cx, opened, from_mailbox)
            }
            Err(ChatError::Replay) => {
                self.stats.duplicates += 1;
                if let Some((opened, _)) = self.unacked.get(&envelope.id) {
                    // Reported, not yet kept by the application (it may have failed to):
                    // report it again rather than answer for it.
                    if opened.device == envelope.from {
                        let again = Box::new(opened.clone());
                        cx.out
                            .events
                            .push_back(NodeEvent::Chat(ChatEvent::Received(again)));
                    }
                    return false;
                }
                // Our receipt may have been lost: send it again (a copy of a receipt gets
                // one too, which its sender ignores). Never to a blocked user.
                let blocked = self
                    .channels
                    .peer_keys(envelope.from)
                    .is_some_and(|k| self.blocked.contains(k.user()));
                if !blocked {
                    self.remember_link(envelope.from, conn);
                    self.receipt(cx, envelope.from, vec![envelope.id]);
                }
                true
            }
            Err(_) => {
                self.stats.refused += 1;
                false
            }
        }
    }

    /// The application keeps these messages now (see [`NodeConfig::chat_app_receipts`]): their
    /// senders get their receipts, and the mailboxes that held any let them go.
    pub fn stored(&mut self, cx: &mut Cx<'_>, ids: &[MessageId]) {
        for id in ids {
            let Some((opened, from_mailbox)) = self.unacked.remove(id) else {
                continue;
            };
            self.receipt(cx, opened.device, vec![*id]);
            if from_mailbox {
                self.ack_mailbox(cx, *id);
            }
        }
    }

    /// Tell the mailbox's super nodes that we hold message `id`.
    fn ack_mailbox(&mut self, cx: &mut Cx<'_>, id: MessageId) {
        let ack = Message::MailboxAck {
            forwarded: false,
            user: self.me.clone(),
            device: cx.cfg.identity.device.device_id(),
            ids: vec![id],
        };
        send_to_own_super_node(cx, &encode(&ack));
    }

    fn remember_link(&mut self, device: DeviceId, conn: Option<ConnId>) {
        let Some(conn) = conn else {
            return;
        };
        if !self.heard_via.contains_key(&device) && self.heard_via.len() >= MAX_HEARD {
            self.heard_via.pop_first();
        }
        self.heard_via.insert(device, conn);
    }

    /// A message opened; returns true when a mailbox holding it may let it go now.
    fn opened(&mut self, cx: &mut Cx<'_>, opened: Opened, from_mailbox: bool) -> bool {
        if self.blocked.contains(&opened.user) {
            self.stats.blocked += 1;
            return true;
        }
        match &opened.item.body {
            Body::Receipt {
                kind: ReceiptKind::Delivered,
                ids,
            } => {
                for id in ids {
                    self.delivered(cx, *id, &opened.user, opened.device);
                }
            }
            Body::Receipt {
                kind: ReceiptKind::Read,
                ids,
            } => cx.out.events.push_back(NodeEvent::Chat(ChatEvent::Read {
                ids: ids.clone(),
                user: opened.user.clone(),
            })),
            Body::Typing { on } => cx.out.events.push_back(NodeEvent::Chat(ChatEvent::Typing {
                user: opened.user.clone(),
                to: opened.item.to.clone(),
                on: *on,
            })),
            _ => {
                if self.app_receipts {
                    // The receipt waits until the application says it keeps the message.
                    self.unacked
                        .insert(opened.item.id, (opened.clone(), from_mailbox));
                    cx.out
                        .events
                        .push_back(NodeEvent::Chat(ChatEvent::Received(Box::new(opened))));
                    return false;
                }
                self.receipt(cx, opened.device, vec![opened.item.id]);
                cx.out
                    .events
                    .push_back(NodeEvent::Chat(ChatEvent::Received(Box::new(opened))));
            }
        }
        true
    }

    /// Device `device` of `user` holds message `id`.
    fn delivered(&mut self, cx: &mut Cx<'_>, id: MessageId, user: &UserName, device: DeviceId) {
        let Some(out) = self.outbox.get_mut(&id) else {
            return;
        };
        if out.copies.remove(&device).is_none() {
            return;
        }
        out.delivered.insert(device);
        cx.out
            .events
            .push_back(NodeEvent::Chat(ChatEvent::Delivered {
                id,
                user: user.clone(),
                device,
            }));
        if out.copies.is_empty() && out.waiting.is_empty() {
            self.outbox.remove(&id);
        }
    }

    /// Seal a delivery receipt for `ids` to `device` (a peer we have a channel with) and send
    /// it back the way its message came.
    fn receipt(&mut self, cx: &mut Cx<'_>, device: DeviceId, ids: Vec<MessageId>) {
        if self.outbox.len() >= MAX_OUTBOX {
            return;
        }
        let Some(keys) = self.channels.peer_keys(device).cloned() else {
            return;
        };
        let item = Item {
            id: self.next_id(),
            to: Target::Direct(keys.user().clone()),
            lamport: 0,
            sent_at: cx.wall,
            body: Body::Receipt {
                kind: ReceiptKind::Delivered,
                ids,
            },
        };
        let Ok(envelope) = self
            .channels
            .seal(&cx.cfg.identity.trusted, cx.wall, &keys, &item)
        else {
            self.stats.refused += 1;
            return;
        };
        // Sent once, the way its message came when that way leads back (a live message:
        // the sender's session with our super node), else through the sender's own super
        // node once a lookup names it (a message from a mailbox).
        let mut copies = BTreeMap::new();
        copies.insert(
            device,
            Copy {
                user: keys.user().clone(),
                bytes: envelope.to_bytes(),
                next: cx.now,
                tries: 0,
                mailbox: false,
                stored: false,
            },
        );
        self.outbox.insert(
            item.id,
            Outgoing {
                item,
                waiting: BTreeSet::new(),
                copies,
                delivered: BTreeSet::new(),
                once: true,
                sent: false,
            },
        );
        self.send_due(cx);
    }

    /// Copies due and pieces given up.
    pub fn handle_timeout(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        let before = self.partials.len();
        self.partials.retain(|_, p| now < p.last + PARTIAL_TIMEOUT);
        self.stats.partials_dropped += (before - self.partials.len()) as u64;
        // Users with messages waiting and nothing online: ask again now and then.
        let stale: Vec<UserName> = self
            .outbox
            .values()
            .flat_map(|o| o.waiting.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|u| !self.lookups.contains_key(u))
            .filter(|u| {
                self.directory
                    .get(u)
                    .is_none_or(|k| now >= k.at + WAITING_RECHECK)
            })
            .collect();
        for user in stale {
            self.directory.remove(&user);
            self.look_up(cx, &user);
        }
        // A lookup that never answered is asked again.
        let lost: Vec<UserName> = self
            .lookups
            .iter()
            .filter(|(_, at)| now >= **at + WAITING_RECHECK)
            .map(|(u, _)| u.clone())
            .collect();
        for user in lost {
            self.lookups.remove(&user);
            self.look_up(cx, &user);
        }
        self.directory.retain(|_, k| now < k.at + DIRECTORY_TTL);
        self.send_due(cx);
        self.tidy(cx);
    }

    /// When this part next wants its timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let copies = self
            .outbox
            .values()
            .flat_map(|o| o.copies.values().map(|c| c.next))
            .min();
        let partials = self
            .partials
            .values()
            .map(|p| p.last + PARTIAL_TIMEOUT)
            .min();
        // A waiting user is asked again [`WAITING_RECHECK`] after its last answer (one with a
        // lookup in flight waits for it), and a lookup with no answer that long after it.
        let waiting = self
            .outbox
            .values()
            .flat_map(|o| o.waiting.iter())
            .filter(|u| !self.lookups.contains_key(*u))
            .filter_map(|u| self.directory.get(u).map(|k| k.at + WAITING_RECHECK))
            .min();
        let lookups = self.lookups.values().map(|at| *at + WAITING_RECHECK).min();
        [copies, partials, waiting, lookups]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The pieces of one envelope for `device`, encoded as control messages.
fn chunks(device: DeviceId, id: MessageId, bytes: &[u8]) -> Vec<Vec<u8>> {
    chat_pieces(bytes)
        .into_iter()
        .map(|(index, count, data)| {
            encode(&Message::ChatChunk {
                to: device,
                id,
                index,
                count,
                data,
            })
        })
        .collect()
}

/// The pieces of one copy for a device's mailbox, to our own super node (which forwards them
/// to the mailbox's super nodes); false when we have none.
fn to_mailbox(
    cx: &mut Cx<'_>,
    user: &UserName,
    device: DeviceId,
    id: MessageId,
    bytes: &[u8],
) -> bool {
    let mut sent = false;
    for (index, count, data) in chat_pieces(bytes) {
        let put = encode(&Message::MailboxPut {
            forwarded: false,
            user: user.clone(),
            to: device,
            id,
            index,
            count,
            data: data.to_vec(),
        });
        sent |= send_to_own_super_node(cx, &put);
    }
    sent
}

/// Send an encoded message to our own super node (our super-node role when we hold it, else
/// the first link); false when there is none.
fn send_to_own_super_node(cx: &mut Cx<'_>, encoded: &[u8]) -> bool {
    if cx.facts.super_node {
        cx.out
            .notify(PartId::SuperNode, Notice::ChatHere(encoded.to_vec()));
        return true;
    }
    match cx.facts.links.first().map(|l| l.conn) {
        Some(conn) => {
            send_encoded(cx, conn, encoded);
            true
        }
        None => false,
    }
}

fn encode(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = bytes::BytesMut::with_capacity(1100);
    msg.encode(&mut buf);
    buf.to_vec()
}

/// Send an encoded control message on session `conn`.
fn send_encoded(cx: &mut Cx<'_>, conn: ConnId, encoded: &[u8]) {
    if let Ok(m) = Message::decode(encoded) {
        let _ = cx.sessions.send(cx.now, conn, &m);
    }
}
