//! End-to-end channels between devices: Olm (X3DH, then the Double Ratchet) from `vodozemac`.
//!
//! Every device holds one [`Channels`]: its Olm account and one ratchet session per device it
//! writes to or hears from. A message for several devices (a user's three phones, a group's
//! members, the sender's own other devices) is sealed once per device, each copy in its own
//! session, so no device can read a copy meant for another and a removed group member simply
//! gets no copy of what follows.
//!
//! What travels is an [`Envelope`]: the message id, the sending and receiving devices and the
//! ciphertext, plus the sender's signed [`DeviceKeys`] while its session is still opening. A
//! super node that carries or stores it sees only that.
//!
//! [`Channels::open`] refuses, each with its own [`ChatError`], an envelope for another
//! device, keys that are not the claimed device's or not certified, an Olm identity other than
//! the signed one (a forged sender), a ciphertext that does not authenticate, a message id it
//! already opened from that device (a replay), and an envelope whose id differs from the one
//! sealed inside. Nothing is changed by a refused envelope.
//!
//! The one exception to this crate's "no OS randomness" rule: `vodozemac` draws its ratchet
//! keys from the operating system and cannot be seeded. Ciphertext bytes therefore differ from
//! run to run; their lengths, and everything the protocol decides, do not. The device's Olm
//! identity and prekey, which its presence records publish, do come from the caller's seeded
//! randomness (handed to `vodozemac` as a dehydrated-device pickle, its one way to import
//! keys), so the same seed publishes the same records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{BufMut, BytesMut};
use vodozemac::olm::{Account, AccountPickle, OlmMessage, Session, SessionConfig, SessionPickle};
use vodozemac::Curve25519PublicKey;

use super::item::{Item, MessageId, TooLong, MAX_TEXT};
use super::keys::{DeviceKeys, KeysError};
use crate::crypto::UserName;
use crate::crypto::{Certificate, DeviceId, DeviceIdentity, TrustedAuthorities, UnixTime};
use crate::rng::Rng;
use crate::wire::{DecodeError, Reader};

/// Largest ciphertext in an envelope: the largest item plus Olm's header, padding and MAC.
pub const MAX_CIPHERTEXT: usize = MAX_TEXT + 1024;
/// Sessions kept per peer device (two devices that open a channel to each other at the same
/// moment end up with two; the newest that worked is used first).
pub const MAX_SESSIONS: usize = 3;
/// Message ids remembered per peer device, to refuse replays.
pub const REMEMBERED_IDS: usize = 4096;
/// Channels a peer opened to us that are remembered (to refuse an old one replayed).
pub const REMEMBERED_SESSIONS: usize = 64;
/// Peer devices kept; the one heard from least recently is forgotten first.
pub const MAX_PEERS: usize = 4096;
const ENVELOPE_VERSION: u8 = 1;
const STATE_VERSION: u8 = 1;

/// Why an envelope could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The envelope or the item inside is not well formed.
    #[error("malformed chat message: {0}")]
    Malformed(#[from] DecodeError),
    /// The item is over a limit (text longer than 64 KiB...).
    #[error("chat message too long: {0}")]
    TooLong(#[from] TooLong),
    /// The sender's or recipient's keys were refused.
    #[error("chat keys refused: {0}")]
    Keys(#[from] KeysError),
    /// The envelope is for another device.
    #[error("the message is for another device")]
    NotForUs,
    /// The envelope claims a sender it cannot be from: keys of another device, an Olm identity
    /// other than the signed one, or an id other than the one sealed inside.
    #[error("the message's sender is forged")]
    ForgedSender,
    /// A message in a session we do not have (its opening message never reached us, or the
    /// session was forgotten).
    #[error("no channel with the sending device")]
    UnknownSender,
    /// The ciphertext does not authenticate in any session with the sender.
    #[error("the message does not decrypt")]
    Undecryptable,
    /// This device already opened a message with this id from that device.
    #[error("the message was already received (a replay)")]
    Replay,
    /// Saved channel state that cannot be read back (wrong key, or damaged).
    #[error("saved chat channels cannot be read")]
    BadState,
}

/// A sealed message as super nodes carry and store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The message's id (the same on every device's copy).
    pub id: MessageId,
    /// The sending device.
    pub from: DeviceId,
    /// The receiving device.
    pub to: DeviceId,
    /// The sender's keys, while its session with the receiver is opening (an Olm pre-key
    /// message); `None` once the receiver has answered in it.
    pub sender: Option<DeviceKeys>,
    /// The Olm ciphertext.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// Append the encoded envelope.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(ENVELOPE_VERSION);
        out.put_slice(&self.id.0);
        out.put_slice(&self.from.0);
        out.put_slice(&self.to.0);
        match &self.sender {
            Some(keys) => {
                out.put_u8(1);
                keys.encode(out);
            }
            None => out.put_u8(0),
        }
        out.put_u32(self.ciphertext.len() as u32);
        out.put_slice(&self.ciphertext);
    }

    /// The encoded envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(self.ciphertext.len() + 400);
        self.encode(&mut out);
        out.to_vec()
    }

    /// Decode a whole buffer (the ciphertext at most [`MAX_CIPHERTEXT`] bytes).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        if r.u8()? != ENVELOPE_VERSION {
            return Err(DecodeError::Invalid("envelope version"));
        }
        let id = MessageId(r.array()?);
        let from = DeviceId(r.array()?);
        let to = DeviceId(r.array()?);
        let sender = match r.u8()? {
            0 => None,
            1 => Some(DeviceKeys::read(&mut r)?),
            _ => return Err(DecodeError::Invalid("sender keys flag")),
        };
        let len = r.u32()? as usize;
        if len > MAX_CIPHERTEXT {
            return Err(DecodeError::TooLong {
                what: "ciphertext",
                len,
                max: MAX_CIPHERTEXT,
            });
        }
        let ciphertext = r.take(len)?.to_vec();
        r.finish()?;
        Ok(Self {
            id,
            from,
            to,
            sender,
            ciphertext,
        })
    }
}

/// A message [`Channels::open`] let through, with its author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The user who wrote it (certified).
    pub user: UserName,
    /// The device that wrote it.
    pub device: DeviceId,
    /// The message.
    pub item: Item,
}

struct Peer {
    keys: DeviceKeys,
    /// Newest that worked first.
    sessions: Vec<Session>,
    /// The sessions this peer opened to us (pre-key messages), newest last: one of them seen
    /// again after it left `sessions` is an old message replayed, not a new channel.
    opened_sessions: VecDeque<String>,
    opened: VecDeque<MessageId>,
    opened_set: BTreeSet<MessageId>,
    last_used: u64,
}

impl Peer {
    fn new(keys: DeviceKeys) -> Self {
        Self {
            keys,
            sessions: Vec::new(),
            opened_sessions: VecDeque::new(),
            opened: VecDeque::new(),
            opened_set: BTreeSet::new(),
            last_used: 0,
        }
    }

    fn remember(&mut self, id: MessageId) {
        if self.opened_set.insert(id) {
            self.opened.push_back(id);
            if self.opened.len() > REMEMBERED_IDS {
                if let Some(old) = self.opened.pop_front() {
                    self.opened_set.remove(&old);
                }
            }
        }
    }

    fn keep_session(&mut self, session: Session) {
        self.sessions.insert(0, session);
        self.sessions.truncate(MAX_SESSIONS);
    }
}

/// A device's end-to-end channels: see the [module documentation](self).
pub struct Channels {
    account: Account,
    keys: DeviceKeys,
    peers: BTreeMap<DeviceId, Peer>,
    uses: u64,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels")
            .field("device", &self.keys.device())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// An Olm account whose identity, signing and fallback keys derive from `rng`.
///
/// `vodozemac` makes keys only from the OS, or takes them back from a pickle: this builds the
/// pickle of a dehydrated device (MSC3814: version 1, the Curve25519 and Ed25519 secrets, no
/// one-time keys, one fallback key), seals it as that format requires, and opens it. Returns
/// the account and the fallback key's public half.
fn seeded_account(rng: &mut Rng) -> (Account, [u8; 32]) {
    use chacha20poly1305::aead::{Aead, KeyInit};
    let (identity, signing, fallback) = (rng.bytes32(), rng.bytes32(), rng.bytes32());
    let mut pickle = Vec::with_capacity(105);
    pickle.extend_from_slice(&1u32.to_be_bytes());
    pickle.extend_from_slice(&identity);
    pickle.extend_from_slice(&signing);
    pickle.extend_from_slice(&0u32.to_be_bytes());
    pickle.push(1);
    pickle.extend_from_slice(&fallback);
    // A local hand-over, not storage: any key and nonce do.
    let key = [0x5A; 32];
    let nonce = [0; 12];
    let sealed = chacha20poly1305::ChaCha20Poly1305::new(&key.into())
        .encrypt(&nonce.into(), pickle.as_slice())
        .expect("sealing 105 bytes cannot fail");
    let account = Account::from_dehydrated_device(
        &vodozemac::base64_encode(sealed),
        &vodozemac::base64_encode(nonce),
        &key,
    )
    .expect("a well-formed dehydrated-device pickle");
    let prekey = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(fallback));
    (account, prekey.to_bytes())
}

impl Channels {
    /// A new Olm account for `device`, its keys drawn from `rng` and signed at `now`.
    pub fn new(
        device: &DeviceIdentity,
        certificate: Certificate,
        now: UnixTime,
        rng: &mut Rng,
    ) -> Self {
        let (account, prekey) = seeded_account(rng);
        let keys = DeviceKeys::sign(
            device,
            certificate,
            account.curve25519_key().to_bytes(),
            prekey,
            now,
        );
        Self {
            account,
            keys,
            peers: BTreeMap::new(),
            uses: 0,
        }
    }

    /// This device's signed keys, to publish.
    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }

    /// Sign this device's keys again with a renewed certificate (the Olm keys stay).
    pub fn renew(&mut self, device: &DeviceIdentity, certificate: Certificate, now: UnixTime) {
        self.keys = DeviceKeys::sign(
            device,
            certificate,
            self.keys.identity,
            self.keys.prekey,
            now,
        );
    }

    /// The keys of a peer device we have a channel with.
    pub fn peer_keys(&self, device: DeviceId) -> Option<&DeviceKeys> {
        self.peers.get(&device).map(|p| &p.keys)
    }

    /// How many peer devices have a channel.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    fn touch(&mut self, device: DeviceId) {
        self.uses += 1;
        if let Some(p) = self.peers.get_mut(&device) {
            p.last_used = self.uses;
        }
    }

    fn make_room(&mut self) {
        while self.peers.len() >= MAX_PEERS {
            let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.last_used)
                .map(|(d, _)| *d)
            else {
                return;
            };
            self.peers.remove(&oldest);
        }
    }

    /// Learn (or refresh) a peer device's keys; newer signed keys replace older ones, and a
    /// changed Olm identity drops the sessions made with the old one.
    fn learn(&mut self, keys: &DeviceKeys) {
        let device = keys.device();
        match self.peers.get_mut(&device) {
            Some(p) => {
                if keys.signed_at > p.keys.signed_at {
                    if keys.identity != p.keys.identity {
                        p.sessions.clear();
                    }
                    p.keys = keys.clone();
                }
            }
            None => {
                self.make_room();
                self.peers.insert(device, Peer::new(keys.clone()));
            }
        }
    }

    /// Seal `item` for the device whose keys are `to` (checked against `trusted` at `now`).
    pub fn seal(
        &mut self,
        trusted: &TrustedAuthorities,
        now: UnixTime,
        to: &DeviceKeys,
        item: &Item,
    ) -> Result<Envelope, ChatError> {
        let plaintext = item.to_bytes()?;
        to.verify(trusted, now)?;
        self.learn(to);
        let device = to.device();
        self.touch(device);
        let peer = self.peers.get_mut(&device).expect("learnt above");
        if peer.sessions.is_empty() {
            let session = self.account.create_outbound_session(
                SessionConfig::version_2(),
                Curve25519PublicKey::from_bytes(peer.keys.identity),
                Curve25519PublicKey::from_bytes(peer.keys.prekey),
            );
            peer.sessions.push(session);
        }
        let message = peer.sessions[0].encrypt(&plaintext);
        let (sender, ciphertext) = match message {
            OlmMessage::PreKey(m) => (Some(self.keys.clone()), m.to_bytes()),
            OlmMessage::Normal(m) => (None, m.to_bytes()),
        };
        Ok(Envelope {
            id: item.id,
            from: self.keys.device(),
            to: device,
            sender,
            ciphertext,
        })
    }

    /// Open an envelope addressed to this device (see the [module documentation](self) for
    /// what is refused).
    pub fn open(
        &mut self,
        trusted: &TrustedAuthorities,
        now: UnixTime,
        envelope: &Envelope,
    ) -> Result<Opened, ChatError> {
        if envelope.to != self.keys.device() {
            return Err(ChatError::NotForUs);
        }
        if self
            .peers
            .get(&envelope.from)
            .is_some_and(|p| p.opened_set.contains(&envelope.id))
        {
            return Err(ChatError::Replay);
        }
        // Decrypt in a copy of the session: it replaces the session only once the envelope
        // is found genuine, so a tampered copy cannot use up the key its genuine retransmission
        // needs.
        let (plaintext, commit) = match &envelope.sender {
            Some(keys) => self.open_first(trusted, now, envelope, keys)?,
            None => {
                let message = vodozemac::olm::Message::from_bytes(&envelope.ciphertext)
                    .map_err(|_| ChatError::Undecryptable)?;
                let peer = self
                    .peers
                    .get(&envelope.from)
                    .ok_or(ChatError::UnknownSender)?;
                trial_decrypt(peer, &OlmMessage::Normal(message))?
            }
        };
        let item = Item::decode(&plaintext)?;
        if item.id != envelope.id {
            return Err(ChatError::ForgedSender);
        }
        if let Commit::New(keys, _) = &commit {
            self.learn(keys);
        }
        self.touch(envelope.from);
        let peer = self.peers.get_mut(&envelope.from).expect("known or learnt");
        match commit {
            Commit::Replace(i, session) => {
                peer.sessions.remove(i);
                peer.sessions.insert(0, session);
            }
            Commit::New(_, session) => {
                peer.opened_sessions.push_back(session.session_id());
                if peer.opened_sessions.len() > REMEMBERED_SESSIONS {
                    peer.opened_sessions.pop_front();
                }
                peer.keep_session(session)
            }
        }
        peer.remember(item.id);
        Ok(Opened {
            user: peer.keys.user().clone(),
            device: envelope.from,
            item,
        })
    }

    /// Open a pre-key message: in a session we already have from it (the sender writes again
    /// before hearing back), or in a new one.
    fn open_first(
        &mut self,
        trusted: &TrustedAuthorities,
        now: UnixTime,
        envelope: &Envelope,
        keys: &DeviceKeys,
    ) -> Result<(Vec<u8>, Commit), ChatError> {
        if keys.device() != envelope.from {
            return Err(ChatError::ForgedSender);
        }
        keys.verify(trusted, now)?;
        let message = vodozemac::olm::PreKeyMessage::from_bytes(&envelope.ciphertext)
            .map_err(|_| ChatError::Undecryptable)?;
        if message.identity_key().to_bytes() != keys.identity {
            return Err(ChatError::ForgedSender);
        }
        if let Some(peer) = self.peers.get(&envelope.from) {
            let id = message.session_id();
            if peer.keys.identity == keys.identity
                && peer.opened_sessions.contains(&id)
                && !peer.sessions.iter().any(|s| s.session_id() == id)
            {
                // A channel it opened long ago, replayed: the fallback key would open it
                // again, and it would push the live session aside.
                return Err(ChatError::Undecryptable);
            }
            if peer.keys.identity == keys.identity
                && peer.sessions.iter().any(|s| s.session_id() == id)
            {
                // The session exists: the message decrypts in it, or it does not (a replay
                // under another id, whose message key was used up, is not a replay of an id
                // we opened: only those are answered as such).
                return trial_decrypt(peer, &OlmMessage::PreKey(message));
            }
        }
        let created = self
            .account
            .create_inbound_session(Curve25519PublicKey::from_bytes(keys.identity), &message)
            .map_err(|_| ChatError::Undecryptable)?;
        Ok((
            created.plaintext,
            Commit::New(Box::new(keys.clone()), created.session),
        ))
    }

    /// Everything, encrypted under `key`, to keep across restarts ([`Channels::restore`]).
    pub fn save(&self, key: &[u8; 32]) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(4096);
        out.put_u8(STATE_VERSION);
        self.keys.encode(&mut out);
        put_blob(&mut out, self.account.pickle().encrypt(key).as_bytes());
        out.put_u32(self.peers.len() as u32);
        for peer in self.peers.values() {
            peer.keys.encode(&mut out);
            out.put_u8(peer.sessions.len() as u8);
            for s in &peer.sessions {
                put_blob(&mut out, s.pickle().encrypt(key).as_bytes());
            }
            out.put_u16(peer.opened.len() as u16);
            for id in &peer.opened {
                out.put_slice(&id.0);
            }
        }
        out.to_vec()
    }

    /// Channels saved by [`Channels::save`] under `key`.
    pub fn restore(saved: &[u8], key: &[u8; 32]) -> Result<Self, ChatError> {
        let bad = |_| ChatError::BadState;
        let mut r = Reader::new(saved);
        if r.u8().map_err(bad)? != STATE_VERSION {
            return Err(ChatError::BadState);
        }
        let keys = DeviceKeys::read(&mut r).map_err(bad)?;
        let account = blob(&mut r)
            .and_then(|b| AccountPickle::from_encrypted(&b, key).map_err(|_| ChatError::BadState))
            .map(Account::from_pickle)?;
        let n = r.u32().map_err(bad)? as usize;
        let mut channels = Self {
            account,
            keys,
            peers: BTreeMap::new(),
            uses: 0,
        };
        for _ in 0..n.min(MAX_PEERS) {
            let mut peer = Peer::new(DeviceKeys::read(&mut r).map_err(bad)?);
            let sessions = usize::from(r.u8().map_err(bad)?).min(MAX_SESSIONS);
            for _ in 0..sessions {
                let pickle = blob(&mut r).and_then(|b| {
                    SessionPickle::from_encrypted(&b, key).map_err(|_| ChatError::BadState)
                })?;
                peer.sessions.push(Session::from_pickle(pickle));
            }
            let ids = usize::from(r.u16().map_err(bad)?).min(REMEMBERED_IDS);
            for _ in 0..ids {
                peer.remember(MessageId(r.array().map_err(bad)?));
            }
            channels.peers.insert(peer.keys.device(), peer);
        }
        r.finish().map_err(bad)?;
        Ok(channels)
    }
}

/// What a successful decryption changes, once the envelope is found genuine.
enum Commit {
    /// The peer's session at this index, advanced.
    Replace(usize, Session),
    /// A new session, opened by a pre-key message from the device with these keys.
    New(Box<DeviceKeys>, Session),
}

/// Decrypt in a copy of each of the peer's sessions, newest first.
fn trial_decrypt(peer: &Peer, message: &OlmMessage) -> Result<(Vec<u8>, Commit), ChatError> {
    for (i, session) in peer.sessions.iter().enumerate() {
        let mut copy = Session::from_pickle(session.pickle());
        if let Ok(plaintext) = copy.decrypt(message) {
            return Ok((plaintext, Commit::Replace(i, copy)));
        }
    }
    Err(ChatError::Undecryptable)
}

fn put_blob(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn blob(r: &mut Reader<'_>) -> Result<String, ChatError> {
    let len = r.u32().map_err(|_| ChatError::BadState)? as usize;
    let raw = r.take(len).map_err(|_| ChatError::BadState)?;
    String::from_utf8(raw.to_vec()).map_err(|_| ChatError::BadState)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::item::{Body, Target};
    use crate::rng::Rng;
    use crate::testkit::{TestNetwork, TEST_WALL};
    use proptest::prelude::*;

    struct Dev {
        channels: Channels,
        user: UserName,
    }

    fn dev(net: &TestNetwork, user: &str) -> Dev {
        let id = net.identity(user);
        Dev {
            channels: Channels::new(
                &id.device,
                id.certificate,
                TEST_WALL,
                &mut Rng::from_seed(user.bytes().fold(7, |h, b| h * 31 + u64::from(b))),
            ),
            user: UserName::parse(user).unwrap(),
        }
    }

    /// A second device of `user`, certified by the same authority.
    fn second_device(net: &TestNetwork, user: &str, seed: u64) -> Dev {
        let device = DeviceIdentity::generate(&mut Rng::from_seed(seed));
        let user = UserName::parse(user).unwrap();
        let cert = net.authority().certify(
            &user,
            device.dh_public(),
            device.signing_public(),
            UnixTime(TEST_WALL.0 - 60),
            UnixTime(TEST_WALL.0 + 86_400),
        );
        Dev {
            channels: Channels::new(&device, cert, TEST_WALL, &mut Rng::from_seed(seed + 1)),
            user,
        }
    }

    fn text(n: u8, s: &str) -> Item {
        Item {
            id: MessageId([n; 16]),
            to: Target::Direct(UserName::parse("bob").unwrap()),
            lamport: u64::from(n),
            sent_at: TEST_WALL,
            body: Body::Text {
                text: s.into(),
                reply_to: None,
            },
        }
    }

    fn send(net: &TestNetwork, from: &mut Dev, to: &Dev, item: &Item) -> Envelope {
        from.channels
            .seal(&net.trusted(), TEST_WALL, to.channels.keys(), item)
            .unwrap()
    }

    fn open(net: &TestNetwork, to: &mut Dev, env: &Envelope) -> Result<Opened, ChatError> {
        to.channels.open(&net.trusted(), TEST_WALL, env)
    }

    fn says(opened: Result<Opened, ChatError>) -> String {
        match opened.unwrap().item.body {
            Body::Text { text, .. } => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_channel_opens_without_the_receiver_online_then_ratchets() {
        let net = TestNetwork::new(1);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        // Alice writes twice before bob answers: both carry her keys (pre-key messages).
        let e1 = send(&net, &mut a, &b, &text(1, "hi"));
        let e2 = send(&net, &mut a, &b, &text(2, "you there?"));
        assert!(e1.sender.is_some() && e2.sender.is_some());
        // They arrive out of order.
        assert_eq!(says(open(&net, &mut b, &e2)), "you there?");
        let first = open(&net, &mut b, &e1).unwrap();
        assert_eq!(
            (first.user, first.device),
            (a.user.clone(), a.channels.keys().device())
        );
        // Bob answers in the session: no keys on it; after it alice's are plain messages too.
        let r = send(&net, &mut b, &a, &text(3, "hello"));
        assert!(r.sender.is_none());
        assert_eq!(says(open(&net, &mut a, &r)), "hello");
        let e4 = send(&net, &mut a, &b, &text(4, "good"));
        assert!(e4.sender.is_none());
        assert_eq!(says(open(&net, &mut b, &e4)), "good");
        // The super node in between saw neither text.
        for e in [&e1, &e2, &r, &e4] {
            let bytes = e.to_bytes();
            assert!(!bytes.windows(4).any(|w| w == b"good" || w == b"hell"));
            assert_eq!(Envelope::decode(&bytes).unwrap(), *e);
        }
    }

    #[test]
    fn what_a_short_message_costs_on_the_wire() {
        let net = TestNetwork::new(10);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let first = send(&net, &mut a, &b, &text(1, "hello"));
        open(&net, &mut b, &first).unwrap();
        let reply = send(&net, &mut b, &a, &text(2, "hello"));
        open(&net, &mut a, &reply).unwrap();
        let plain = send(&net, &mut a, &b, &text(3, "hello"));
        let item = text(3, "hello").to_bytes().unwrap().len();
        let (first, plain) = (first.to_bytes().len(), plain.to_bytes().len());
        eprintln!(
            "CHAT WIRE: a 5-byte text is a {item}-byte item, a {first}-byte envelope while the channel opens, {plain} bytes after"
        );
        assert!(plain < item + 150, "{plain}");
        assert!(first < plain + 600, "{first}");
    }

    #[test]
    fn two_devices_that_open_channels_to_each_other_at_once_both_get_through() {
        let net = TestNetwork::new(2);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let ea = send(&net, &mut a, &b, &text(1, "from alice"));
        let eb = send(&net, &mut b, &a, &text(2, "from bob"));
        assert_eq!(says(open(&net, &mut b, &ea)), "from alice");
        assert_eq!(says(open(&net, &mut a, &eb)), "from bob");
        for n in 3..20u8 {
            let e = send(&net, &mut a, &b, &text(n, "a"));
            assert_eq!(says(open(&net, &mut b, &e)), "a");
            let e = send(&net, &mut b, &a, &text(n + 100, "b"));
            assert_eq!(says(open(&net, &mut a, &e)), "b");
        }
    }

    #[test]
    fn replays_are_refused_and_change_nothing() {
        let net = TestNetwork::new(3);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let e1 = send(&net, &mut a, &b, &text(1, "once"));
        open(&net, &mut b, &e1).unwrap();
        assert_eq!(open(&net, &mut b, &e1), Err(ChatError::Replay));
        let r = send(&net, &mut b, &a, &text(2, "ok"));
        open(&net, &mut a, &r).unwrap();
        let e3 = send(&net, &mut a, &b, &text(3, "plain"));
        open(&net, &mut b, &e3).unwrap();
        assert_eq!(open(&net, &mut b, &e3), Err(ChatError::Replay));
        // A replay under a fresh id decrypts nowhere: its message key is used up.
        let mut renamed = e3.clone();
        renamed.id = MessageId([99; 16]);
        assert_eq!(open(&net, &mut b, &renamed), Err(ChatError::Undecryptable));
        // The pre-key message replayed under a fresh id finds its session but does not
        // decrypt: refused, and not answered as a replay (only ids opened here are).
        let mut renamed = e1.clone();
        renamed.id = MessageId([98; 16]);
        assert_eq!(open(&net, &mut b, &renamed), Err(ChatError::Undecryptable));
        let e4 = send(&net, &mut a, &b, &text(4, "still fine"));
        assert_eq!(says(open(&net, &mut b, &e4)), "still fine");
    }

    #[test]
    fn an_old_channel_replayed_after_newer_ones_opens_nothing() {
        let net = TestNetwork::new(11);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let key = [3; 32];
        let fresh = a.channels.save(&key);
        let first = send(&net, &mut a, &b, &text(1, "first"));
        open(&net, &mut b, &first).unwrap();
        // Alice's device opens channel after channel (it lost its state each time): bob keeps
        // the newest three, the first falls out.
        for n in 0..MAX_SESSIONS as u8 {
            a.channels = Channels::restore(&fresh, &key).unwrap();
            let e = send(&net, &mut a, &b, &text(10 + n, "again"));
            assert_eq!(says(open(&net, &mut b, &e)), "again");
        }
        // The first pre-key message replayed under a fresh id would open a channel anew with
        // the fallback key: refused instead, and the live channel stays first.
        let mut replayed = first.clone();
        replayed.id = MessageId([97; 16]);
        assert_eq!(open(&net, &mut b, &replayed), Err(ChatError::Undecryptable));
        let reply = send(&net, &mut b, &a, &text(20, "still here"));
        assert_eq!(says(open(&net, &mut a, &reply)), "still here");
    }

    #[test]
    fn forged_senders_are_refused() {
        let net = TestNetwork::new(4);
        let (mut a, mut b, mut m) = (dev(&net, "alice"), dev(&net, "bob"), dev(&net, "mallory"));
        // Mallory seals with her own Olm account but presents alice's signed keys.
        let mut e = send(&net, &mut m, &b, &text(1, "I am alice"));
        e.from = a.channels.keys().device();
        e.sender = Some(a.channels.keys().clone());
        assert_eq!(open(&net, &mut b, &e), Err(ChatError::ForgedSender));
        // Her own keys under alice's device id.
        let mut e = send(&net, &mut m, &b, &text(2, "I am alice"));
        e.from = a.channels.keys().device();
        assert_eq!(open(&net, &mut b, &e), Err(ChatError::ForgedSender));
        // Alice's keys re-signed by mallory (the signature is not alice's device's).
        let mut forged = a.channels.keys().clone();
        forged.identity = m.channels.keys().identity;
        let mut e = send(&net, &mut m, &b, &text(3, "I am alice"));
        e.from = a.channels.keys().device();
        e.sender = Some(forged);
        assert_eq!(
            open(&net, &mut b, &e),
            Err(ChatError::Keys(KeysError::BadSignature))
        );
        // A plain message claiming to come from alice, with no channel: unknown sender; once
        // alice has a channel, mallory's plain message under her id does not decrypt.
        let real = send(&net, &mut a, &b, &text(4, "hi bob"));
        open(&net, &mut b, &real).unwrap();
        let reply = send(&net, &mut b, &a, &text(5, "hi"));
        open(&net, &mut a, &reply).unwrap();
        let mut plain = send(&net, &mut a, &b, &text(6, "real"));
        plain.ciphertext[10] ^= 1;
        assert_eq!(open(&net, &mut b, &plain), Err(ChatError::Undecryptable));
        plain.ciphertext[10] ^= 1;
        // The tampered copy used up nothing: the genuine one opens.
        assert_eq!(says(open(&net, &mut b, &plain)), "real");
        assert_eq!(b.channels.peers(), 1, "mallory's attempts left no channel");
    }

    #[test]
    fn an_envelope_whose_id_was_changed_is_refused_and_the_genuine_one_still_opens() {
        let net = TestNetwork::new(5);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let e = send(&net, &mut a, &b, &text(1, "x"));
        let mut changed = e.clone();
        changed.id = MessageId([7; 16]);
        assert_eq!(open(&net, &mut b, &changed), Err(ChatError::ForgedSender));
        assert_eq!(says(open(&net, &mut b, &e)), "x");
        // Not for this device.
        let carol = dev(&net, "carol");
        let e2 = send(&net, &mut a, &carol, &text(2, "for carol"));
        assert_eq!(open(&net, &mut b, &e2), Err(ChatError::NotForUs));
    }

    #[test]
    fn oversized_and_malformed_messages_are_refused() {
        let net = TestNetwork::new(6);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let big = text(1, &"x".repeat(crate::chat::item::MAX_TEXT + 1));
        assert!(matches!(
            a.channels
                .seal(&net.trusted(), TEST_WALL, b.channels.keys(), &big),
            Err(ChatError::TooLong(_))
        ));
        // The largest message fits in an envelope.
        let max = text(2, &"x".repeat(crate::chat::item::MAX_TEXT));
        let e = send(&net, &mut a, &b, &max);
        assert!(e.ciphertext.len() <= MAX_CIPHERTEXT);
        // With the sender's keys on it, it still fits in the pieces a message may have.
        assert!(e.sender.is_some());
        let wire = e.to_bytes().len();
        let most = crate::wire::message::MAX_CHAT_CHUNK * crate::wire::message::MAX_CHAT_CHUNKS;
        assert!(wire <= most, "{wire} > {most}");
        assert_eq!(Envelope::decode(&e.to_bytes()).unwrap(), e);
        open(&net, &mut b, &e).unwrap();
        let mut huge = e.clone();
        huge.ciphertext = vec![0; MAX_CIPHERTEXT + 1];
        assert!(matches!(
            Envelope::decode(&huge.to_bytes()),
            Err(DecodeError::TooLong {
                what: "ciphertext",
                ..
            })
        ));
        // Garbage where the ciphertext should be.
        let mut junk = send(&net, &mut a, &b, &text(3, "y"));
        junk.ciphertext = vec![0x03; 80];
        assert_eq!(open(&net, &mut b, &junk), Err(ChatError::Undecryptable));
        junk.sender = None;
        assert_eq!(open(&net, &mut b, &junk), Err(ChatError::Undecryptable));
    }

    #[test]
    fn a_users_other_devices_each_get_their_own_copy() {
        let net = TestNetwork::new(7);
        let mut a = dev(&net, "alice");
        let mut a2 = second_device(&net, "alice", 70);
        let mut b = dev(&net, "bob");
        let item = text(1, "to bob, and to my other phone");
        let to_b = send(&net, &mut a, &b, &item);
        let to_a2 = send(&net, &mut a, &a2, &item);
        assert_eq!(to_b.id, to_a2.id, "one message id on every copy");
        assert_eq!(open(&net, &mut a2, &to_b), Err(ChatError::NotForUs));
        let mine = open(&net, &mut a2, &to_a2).unwrap();
        assert_eq!(mine.user, a.user);
        assert_eq!(open(&net, &mut b, &to_a2), Err(ChatError::NotForUs));
        open(&net, &mut b, &to_b).unwrap();
    }

    #[test]
    fn channels_survive_a_restart_and_refuse_the_wrong_key() {
        let net = TestNetwork::new(8);
        let (mut a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
        let e = send(&net, &mut a, &b, &text(1, "before"));
        open(&net, &mut b, &e).unwrap();
        let key = [5; 32];
        let saved = b.channels.save(&key);
        assert!(matches!(
            Channels::restore(&saved, &[6; 32]),
            Err(ChatError::BadState)
        ));
        assert!(matches!(
            Channels::restore(&saved[..saved.len() - 1], &key),
            Err(ChatError::BadState)
        ));
        b.channels = Channels::restore(&saved, &key).unwrap();
        assert_eq!(open(&net, &mut b, &e), Err(ChatError::Replay), "ids kept");
        let e2 = send(&net, &mut a, &b, &text(2, "after"));
        assert_eq!(says(open(&net, &mut b, &e2)), "after");
        let r = send(&net, &mut b, &a, &text(3, "back"));
        assert_eq!(says(open(&net, &mut a, &r)), "back");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_envelopes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            with_keys in any::<bool>(),
        ) {
            let net = TestNetwork::new(9);
            let (a, mut b) = (dev(&net, "alice"), dev(&net, "bob"));
            let _ = Envelope::decode(&bytes);
            let env = Envelope {
                id: MessageId([1; 16]),
                from: a.channels.keys().device(),
                to: b.channels.keys().device(),
                sender: with_keys.then(|| a.channels.keys().clone()),
                ciphertext: bytes,
            };
            prop_assert!(open(&net, &mut b, &env).is_err());
            prop_assert_eq!(b.channels.peers(), 0);
        }
    }
}
