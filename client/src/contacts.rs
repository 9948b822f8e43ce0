//! The buddy list on this device, and its backup in the network.
//!
//! The list itself is `natter_core::contacts::BuddyList` (a state that merges field by
//! field). Here it is kept on disk (`contacts.bin` in the data directory, next to the
//! device's keys) and kept in step with the backup next to the account on the login server:
//!
//! 1. fetch the backup (its version, the sealed list, the list key's envelope);
//! 2. open it with the list key (from this device's file, else from the envelope with the
//!    password) and merge it into the local list: another device's edits come in, and this
//!    device's edits, even offline ones, stay;
//! 3. if the local list holds anything the backup lacks, seal it as the next version and store
//!    it; if another device stored first (a version conflict), start again from 1.
//!
//! A sync runs on the `natter-contacts` thread after every login, shortly after every edit,
//! after a password change (the key is wrapped again under the new password), when another
//! device pokes this one (it left a contact request or an answer for this user, or stored a
//! new version of this user's list: see [`Contacts::poked`]), and every
//! [`CONTACTS_PULL_EVERY`] while logged in; [`Client::sync_contacts`](crate::Client::sync_contacts)
//! runs one now. A refused backup (tampered, truncated, rolled back, another account's)
//! leaves the local list as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use natter_core::contacts::{
    backup, envelope, BackupError, BuddyList, EnvelopeError, ListError, ListKey, StretchParams,
};
use natter_core::crypto::{DeviceId, UnixTime, UserName};
use natter_core::login::client::{LoginClientError, LoginClientEvent, Operation};
use natter_core::login::proto::{
    ContactRequest, LoginError as Refused, MAX_REQUESTS_LISTED, MAX_REQUEST_NOTE,
};
use natter_core::rng::Rng;
use natter_core::wire::Reader;
use natter_transport::login::client::{run_operations, Budget};
use natter_transport::login::files::write_private;
use natter_transport::{os_seed, wall_clock};

use crate::client::{client_version, lock, Shared, LOGIN_TIMEOUT};
use crate::error::{AccountError, ContactsError, ServerError};
use crate::events::Event;
use crate::presence::Availability;

/// How often a logged-in client fetches the backup to learn its other devices' edits.
pub const CONTACTS_PULL_EVERY: Duration = Duration::from_secs(600);
/// How long after an edit its sync starts (edits in a burst go out together).
const EDIT_DELAY: Duration = Duration::from_millis(300);
/// The first wait before a failed sync is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between tries of a failed sync.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// A poke from the user's own other device starts a sync at most this often...
const POKE_GAP: Duration = Duration::from_secs(5);
/// ...and one from another user at most this often after the last (a user poking in a loop
/// cannot make this device ask the login server at their pace).
const POKE_GAP_OTHERS: Duration = Duration::from_secs(15);
/// Version conflicts one sync takes (each means another device stored meanwhile) before it
/// gives up for now.
const MAX_CONFLICTS: usize = 4;
/// The largest encoded list a backup holds: the backup's limit less its header, the
/// writer's certificate, the nonce, the tag and the signature (well under 2 KiB).
const MAX_LIST_BYTES: usize = backup::MAX_BACKUP_LEN - 2048;
/// The local file's first bytes.
const MAGIC: &[u8; 4] = b"NCT1";
const FLAG_REWRAP: u8 = 2;
const FLAG_KEY: u8 = 4;

/// One user in the buddy list: a contact, a blocked user, a user asking to be a contact, or
/// several of these.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contact {
    /// The user.
    pub user: UserName,
    /// Whether the user is a contact (false: only blocked, or only asking to be one).
    pub contact: bool,
    /// Whether the user is blocked: their calls never ring.
    pub blocked: bool,
    /// The nickname this user gave them (empty: none).
    pub nickname: String,
    /// Their own display name, as last learnt (empty: not known).
    pub display_name: String,
    /// The groups they are in, in label order.
    pub groups: Vec<String>,
    /// Their contact request to this user, waiting for an answer: its note. Answer it with
    /// [`Client::add_contact`](crate::Client::add_contact) (accept) or
    /// [`Client::decline_contact`](crate::Client::decline_contact), or leave it.
    pub request: Option<String>,
    /// How available they are, as their super nodes last pushed it (contacts only: `Online`
    /// or `Offline` for now; `Offline` until known). Changes come as
    /// [`Event::ContactPresence`](crate::Event::ContactPresence).
    pub availability: Availability,
}

/// What [`Client::sync_contacts`](crate::Client::sync_contacts) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ContactsSync {
    /// The backup's version now (0: the account has none yet, the list being empty).
    pub version: u64,
    /// Edits of other devices came in: the list changed.
    pub merged: bool,
    /// This device stored a new version.
    pub stored: bool,
}

/// `user`'s entry as the application sees it (`None`: neither a contact nor blocked).
fn view(b: &Book, seen: &BTreeMap<UserName, Availability>, user: &UserName) -> Option<Contact> {
    let entry = b
        .list
        .get(user)
        .filter(|e| e.is_contact() || e.is_blocked());
    let request = b
        .incoming
        .get(user)
        .filter(|_| !b.list.is_blocked(user))
        .map(|q| q.note.clone());
    if entry.is_none() && request.is_none() {
        return None;
    }
    Some(Contact {
        user: user.clone(),
        contact: entry.is_some_and(|e| e.is_contact()),
        blocked: entry.is_some_and(|e| e.is_blocked()),
        nickname: entry.map_or_else(String::new, |e| e.nickname().to_string()),
        display_name: entry.map_or_else(String::new, |e| e.display_name().to_string()),
        groups: entry.map_or_else(Vec::new, |e| e.groups().map(str::to_string).collect()),
        request,
        availability: seen.get(user).copied().unwrap_or(Availability::Offline),
    })
}

/// The list on this device, as the file holds it.
#[derive(Clone)]
struct Book {
    user: UserName,
    list: BuddyList,
    key: Option<ListKey>,
    /// The highest backup version seen (older ones are refused as rollbacks).
    synced: u64,
    /// The envelope must be wrapped again (under a changed password).
    rewrap: bool,
    /// Contact requests to leave at the login server: user, note, whether it accepts theirs.
    outbox: Vec<(UserName, String, bool)>,
    /// Ids of requests to us answered here (accepted, declined, blocked): to delete there.
    answered: Vec<u64>,
    /// Requests to us waiting for an answer, as the server last listed them.
    incoming: BTreeMap<UserName, ContactRequest>,
    /// Users this device asked and has not heard back from: any request of theirs is their
    /// answer (they may have added this user before seeing the request).
    asked: BTreeSet<UserName>,
}

impl Book {
    fn new(user: UserName, device: DeviceId) -> Self {
        Book {
            user,
            list: BuddyList::new(device),
            key: None,
            synced: 0,
            rewrap: false,
            outbox: Vec::new(),
            answered: Vec::new(),
            incoming: BTreeMap::new(),
            asked: BTreeSet::new(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, ContactsError> {
        let list = self.list.encode().map_err(ContactsError::Edit)?;
        let mut out = Vec::with_capacity(list.len() + 80);
        out.extend_from_slice(MAGIC);
        let mut flags = 0;
        if self.rewrap {
            flags |= FLAG_REWRAP;
        }
        if self.key.is_some() {
            flags |= FLAG_KEY;
        }
        out.push(flags);
        if let Some(k) = &self.key {
            out.extend_from_slice(&k.0);
        }
        out.extend_from_slice(&self.synced.to_be_bytes());
        put_name(&mut out, &self.user);
        out.extend_from_slice(&(self.outbox.len() as u16).to_be_bytes());
        for (to, note, accepting) in &self.outbox {
            put_name(&mut out, to);
            put_note(&mut out, note);
            out.push(u8::from(*accepting));
        }
        out.extend_from_slice(&(self.answered.len() as u16).to_be_bytes());
        for id in &self.answered {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(&(self.incoming.len() as u16).to_be_bytes());
        for q in self.incoming.values() {
            out.extend_from_slice(&q.id.to_be_bytes());
            put_name(&mut out, &q.from);
            put_note(&mut out, &q.note);
            out.extend_from_slice(&q.sent_at.0.to_be_bytes());
            out.push(u8::from(q.accepting));
        }
        out.extend_from_slice(&(self.asked.len() as u16).to_be_bytes());
        for u in &self.asked {
            put_name(&mut out, u);
        }
        out.extend_from_slice(&list);
        Ok(out)
    }

    fn decode(buf: &[u8], device: DeviceId) -> Option<Book> {
        let mut r = Reader::new(buf);
        if r.take(4).ok()? != MAGIC {
            return None;
        }
        let flags = r.u8().ok()?;
        let key = match flags & FLAG_KEY {
            0 => None,
            _ => Some(ListKey(r.array::<32>().ok()?)),
        };
        let synced = r.u64().ok()?;
        let user = read_name(&mut r)?;
        let outbox = (0..r.u16().ok()?)
            .map(|_| {
                Some((
                    read_name(&mut r)?,
                    read_note(&mut r)?,
                    r.bool("accepting").ok()?,
                ))
            })
            .collect::<Option<_>>()?;
        let answered = (0..r.u16().ok()?)
            .map(|_| r.u64().ok())
            .collect::<Option<_>>()?;
        let incoming = (0..r.u16().ok()?)
            .map(|_| {
                let q = ContactRequest {
                    id: r.u64().ok()?,
                    from: read_name(&mut r)?,
                    note: read_note(&mut r)?,
                    sent_at: UnixTime(r.u64().ok()?),
                    accepting: r.bool("accepting").ok()?,
                };
                Some((q.from.clone(), q))
            })
            .collect::<Option<_>>()?;
        let asked = (0..r.u16().ok()?)
            .map(|_| read_name(&mut r))
            .collect::<Option<_>>()?;
        // This device's own file: no bound on how far ahead its stamps are (a clock set back
        // since must not make it unreadable).
        let list = BuddyList::decode(r.rest(), device, u64::MAX / 2).ok()?;
        Some(Book {
            user,
            list,
            key,
            synced,
            rewrap: flags & FLAG_REWRAP != 0,
            outbox,
            answered,
            incoming,
            asked,
        })
    }
}

fn put_name(out: &mut Vec<u8>, user: &UserName) {
    out.push(user.as_str().len() as u8);
    out.extend_from_slice(user.as_str().as_bytes());
}

fn put_note(out: &mut Vec<u8>, note: &str) {
    out.extend_from_slice(&(note.len() as u16).to_be_bytes());
    out.extend_from_slice(note.as_bytes());
}

fn read_name(r: &mut Reader<'_>) -> Option<UserName> {
    let len = usize::from(r.u8().ok()?);
    UserName::parse(std::str::from_utf8(r.take(len).ok()?).ok()?).ok()
}

fn read_note(r: &mut Reader<'_>) -> Option<String> {
    let len = usize::from(r.u16().ok()?);
    String::from_utf8(r.take(len).ok()?.to_vec()).ok()
}

/// The wake-ups of the `natter-contacts` thread.
#[derive(Default)]
struct Control {
    /// A sync is due at this time.
    due: Option<Instant>,
    /// The password to use in the next sync of that user's list (given at login, or the
    /// new one after a password change); dropped after it.
    password: Option<(UserName, String)>,
    /// The wait before the next try of a failed sync.
    backoff: Option<Duration>,
    /// When a poke last started a sync.
    poked: Option<Instant>,
    stop: bool,
}

/// The buddy list of a client, and the thread that keeps its backup in step.
pub(crate) struct Contacts {
    /// Where each user's file goes (`contacts-USER.bin`); `None`: memory only.
    dir: Option<PathBuf>,
    book: Mutex<Option<Book>>,
    /// Held for a whole sync: one at a time.
    syncing: Mutex<()>,
    /// Held while the blocked and watched users go to the node: one push at a time.
    pushing: Mutex<()>,
    /// Contacts' presence, as pushed to the node (lock order: after `book`).
    seen: Mutex<BTreeMap<UserName, Availability>>,
    control: Mutex<Control>,
    wake: Condvar,
    /// Set when the client closes: an exchange under way gives up.
    cancel: Arc<std::sync::atomic::AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Contacts {
    pub fn new(data_dir: Option<&Path>) -> Self {
        Contacts {
            dir: data_dir.map(Path::to_path_buf),
            book: Mutex::new(None),
            syncing: Mutex::new(()),
            pushing: Mutex::new(()),
            seen: Mutex::new(BTreeMap::new()),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            cancel: Arc::default(),
            thread: Mutex::new(None),
        }
    }

    /// Take the list of `user` on `device` (from the file, or a new one) unless it is held
    /// already.
    pub fn open(&self, user: &UserName, device: DeviceId) {
        let mut book = lock(&self.book);
        if book.as_ref().is_some_and(|b| &b.user == user) {
            return;
        }
        let loaded = self.path(user).and_then(|p| {
            let data = std::fs::read(&p).ok()?;
            let b = Book::decode(&data, device);
            if b.is_none() {
                // Kept aside, not lost: the backup in the network restores the list.
                let aside = p.with_extension("unreadable");
                tracing::warn!(path = %p.display(), kept = %aside.display(),
                    "buddy list file unreadable; restoring from the network");
                let _ = std::fs::rename(&p, aside);
            }
            b
        });
        *book = Some(match loaded {
            Some(b) if &b.user == user => b,
            _ => Book::new(user.clone(), device),
        });
    }

    /// Drop the list from memory (logged out), and the password kept for a retry; its file
    /// stays.
    pub fn forget(&self) {
        *lock(&self.book) = None;
        lock(&self.seen).clear();
        let mut ctl = lock(&self.control);
        ctl.password = None;
        ctl.backoff = None;
    }

    /// Run `f` on `user`'s list, under its lock: [`ContactsError::NotLoggedIn`] when the
    /// list held now is another user's (logged out, or in as someone else, meanwhile), so a
    /// sync never writes one user's data into another's list.
    fn with_book<T>(
        &self,
        user: &UserName,
        f: impl FnOnce(&mut Book) -> T,
    ) -> Result<T, ContactsError> {
        let mut book = lock(&self.book);
        match book.as_mut() {
            Some(b) if &b.user == user => Ok(f(b)),
            _ => Err(ContactsError::NotLoggedIn),
        }
    }

    /// The flag that cancels an exchange under way when the client closes.
    pub fn cancel(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.cancel
    }

    /// The file of `user`'s list: one per user, so that logging in as another user in the
    /// same data directory loses nothing.
    fn path(&self, user: &UserName) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("contacts-{user}.bin")))
    }

    /// Write `book` to its file (owner-only, synced to disk: it holds the list key).
    fn save(&self, book: &Book) -> Result<(), ContactsError> {
        let Some(path) = self.path(&book.user) else {
            return Ok(());
        };
        let data = book.encode()?;
        write_private(&path, &data).map_err(|source| ContactsError::Io { path, source })
    }

    /// `user`'s entry (`None`: neither a contact, nor blocked, nor asking).
    pub fn get(&self, user: &UserName) -> Option<Contact> {
        let book = lock(&self.book);
        book.as_ref().and_then(|b| view(b, &lock(&self.seen), user))
    }

    /// Every user in the list.
    pub fn list(&self) -> Vec<Contact> {
        let book = lock(&self.book);
        let Some(b) = book.as_ref() else {
            return Vec::new();
        };
        let mut users: Vec<&UserName> = b.list.entries().map(|(u, _)| u).collect();
        users.extend(b.incoming.keys().filter(|u| b.list.get(u).is_none()));
        users.sort();
        let seen = lock(&self.seen);
        users
            .into_iter()
            .filter_map(|u| view(b, &seen, u))
            .collect()
    }

    /// The contacts whose presence this device watches: every contact not blocked.
    pub fn watched(&self) -> BTreeSet<UserName> {
        let book = lock(&self.book);
        book.as_ref().map_or_else(BTreeSet::new, |b| {
            b.list
                .entries()
                .filter(|(_, e)| e.is_contact() && !e.is_blocked())
                .map(|(u, _)| u.clone())
                .collect()
        })
    }

    /// The node stopped (or starts anew): contacts' presence is unknown until pushed again.
    pub fn forget_presence(&self) {
        lock(&self.seen).clear();
    }

    /// A watched contact's presence changed (pushed by the node). False when `user` is no
    /// longer watched (the push raced with its removal) or nothing changed.
    pub fn presence_changed(&self, user: &UserName, availability: Availability) -> bool {
        let book = lock(&self.book);
        let watched = book
            .as_ref()
            .and_then(|b| b.list.get(user))
            .is_some_and(|e| e.is_contact() && !e.is_blocked());
        watched && lock(&self.seen).insert(user.clone(), availability) != Some(availability)
    }

    /// The blocked users.
    pub fn blocked(&self) -> Vec<UserName> {
        let book = lock(&self.book);
        book.as_ref().map_or_else(Vec::new, |b| {
            b.list
                .entries()
                .filter(|(_, e)| e.is_blocked())
                .map(|(u, _)| u.clone())
                .collect()
        })
    }

    /// Apply one edit of `user`'s entry, keep it on disk, and have it synced soon. Returns
    /// whether the entry changed: an edit that changes nothing visible (adding a contact
    /// again) is not made, so it does not override other devices' later edits.
    pub fn edit(
        &self,
        user: &UserName,
        edit: impl FnOnce(&mut BuddyList, u64) -> Result<bool, natter_core::contacts::ListError>,
    ) -> Result<bool, ContactsError> {
        self.edit_book(user, |b, now| edit(&mut b.list, now).map(drop))
    }

    /// [`Contacts::edit`] of the whole book (the list, the requests in and out).
    fn edit_book(
        &self,
        user: &UserName,
        edit: impl FnOnce(&mut Book, u64) -> Result<(), natter_core::contacts::ListError>,
    ) -> Result<bool, ContactsError> {
        let mut book = lock(&self.book);
        let b = book.as_mut().ok_or(ContactsError::NotLoggedIn)?;
        let before = b.clone();
        edit(b, now_ms()).map_err(ContactsError::Edit)?;
        let unseen = BTreeMap::new();
        if view(b, &unseen, user) == view(&before, &unseen, user) {
            *b = before;
            return Ok(false);
        }
        // Within what a backup holds (removed contacts stay as entries): refused here
        // rather than unstorable later.
        let len = b.list.encode().map_err(ContactsError::Edit)?.len();
        if len > MAX_LIST_BYTES {
            *b = before;
            return Err(ContactsError::Edit(ListError::TooBig {
                what: "bytes",
                len,
                max: MAX_LIST_BYTES,
            }));
        }
        if let Err(e) = self.save(b) {
            // Not kept on disk: not made at all (the caller is told).
            *b = before;
            return Err(e);
        }
        drop(book);
        self.schedule(EDIT_DELAY, None);
        Ok(true)
    }

    /// Add `user`: a contact request to them with `note`, or the answer to theirs.
    pub fn add(&self, user: &UserName, note: &str) -> Result<bool, ContactsError> {
        if note.len() > MAX_REQUEST_NOTE {
            return Err(ContactsError::Edit(ListError::TooLong {
                what: "request note",
                len: note.len(),
                max: MAX_REQUEST_NOTE,
            }));
        }
        let me = lock(&self.book).as_ref().map(|b| b.user.clone());
        if me.as_ref() == Some(user) {
            return Err(ContactsError::InvalidName {
                name: user.to_string(),
                reason: "that is this user".into(),
            });
        }
        self.edit_book(user, |b, now| {
            let answering = b.incoming.remove(user);
            if !b.list.is_contact(user) || answering.is_some() {
                b.list.set_contact(user, true, now)?;
                b.outbox.retain(|(u, _, _)| u != user);
                b.outbox
                    .push((user.clone(), note.to_string(), answering.is_some()));
                if answering.is_none() {
                    b.asked.insert(user.clone());
                }
            }
            b.answered.extend(answering.map(|q| q.id));
            Ok(())
        })
    }

    /// Remove `user` from the list (a request to them not sent yet is not sent).
    pub fn remove(&self, user: &UserName) -> Result<bool, ContactsError> {
        self.edit_book(user, |b, now| {
            b.outbox.retain(|(u, _, _)| u != user);
            b.asked.remove(user);
            b.list.set_contact(user, false, now).map(drop)
        })
    }

    /// Decline `user`'s request (they are not told). False when there was none.
    pub fn decline(&self, user: &UserName) -> Result<bool, ContactsError> {
        self.edit_book(user, |b, _| {
            b.answered.extend(b.incoming.remove(user).map(|q| q.id));
            Ok(())
        })
    }

    /// Block or unblock `user`; a request of theirs waiting here is dropped unanswered.
    pub fn block(&self, user: &UserName, blocked: bool) -> Result<bool, ContactsError> {
        self.edit_book(user, |b, now| {
            b.list.set_blocked(user, blocked, now)?;
            if blocked {
                b.answered.extend(b.incoming.remove(user).map(|q| q.id));
            }
            Ok(())
        })
    }

    /// Have the thread sync within `after` (sooner if one is due sooner), with `password`
    /// (for that user) if given.
    pub fn schedule(&self, after: Duration, password: Option<(UserName, String)>) {
        let mut c = lock(&self.control);
        let at = Instant::now() + after;
        c.due = Some(c.due.map_or(at, |d| d.min(at)));
        if password.is_some() {
            c.password = password;
            c.backoff = None;
        }
        self.wake.notify_all();
    }

    /// Another device poked this one ([`natter_overlay::node::NodeEvent::Poked`]): sync
    /// soon, at most once every [`POKE_GAP`] ([`POKE_GAP_OTHERS`] when another user
    /// poked); a poke while a poked sync is still due adds nothing; a blocked user's pokes
    /// do nothing.
    pub fn poked(&self, from: &UserName) {
        let (blocked, own) = lock(&self.book).as_ref().map_or((false, false), |b| {
            let blocked = b.list.get(from).is_some_and(|e| e.is_blocked());
            (blocked, &b.user == from)
        });
        if blocked {
            return;
        }
        let gap = if own { POKE_GAP } else { POKE_GAP_OTHERS };
        let now = Instant::now();
        let at = {
            let mut c = lock(&self.control);
            if c.poked.is_some_and(|t| t > now) {
                // The sync already due covers this poke too.
                return;
            }
            let at = c.poked.map_or(now, |t| (t + gap).max(now));
            c.poked = Some(at);
            at
        };
        self.schedule(at - now, None);
    }

    /// Mark the envelope for wrapping again under the new password, and sync with it.
    pub fn password_changed(&self, new: &str) {
        let user = lock(&self.book).as_mut().map(|b| {
            b.rewrap = true;
            let _ = self.save(b);
            b.user.clone()
        });
        if let Some(user) = user {
            self.schedule(Duration::ZERO, Some((user, new.to_string())));
        }
    }

    /// Start the `natter-contacts` thread if it is not running.
    pub fn spawn(&self, shared: &Arc<Shared>) {
        let mut thread = lock(&self.thread);
        if thread.is_some() || lock(&self.control).stop {
            return;
        }
        let weak = Arc::downgrade(shared);
        *thread = std::thread::Builder::new()
            .name("natter-contacts".into())
            .spawn(move || run(weak))
            .map_err(|e| tracing::warn!(error = %e, "no buddy-list sync thread"))
            .ok();
    }

    /// Stop the thread (an exchange under way is cancelled) and wait for it.
    pub fn shut_down(&self) {
        lock(&self.control).stop = true;
        self.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_all();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    fn stopped(&self) -> bool {
        lock(&self.control).stop
    }
}

/// A login server's refusal as a buddy-list error.
fn refused(error: LoginClientError) -> ContactsError {
    ContactsError::Server(AccountError::from_client_error(error))
}

/// The `natter-contacts` thread: waits for a sync to be due, runs it, reports it.
fn run(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let c = &shared.contacts;
        let password = {
            let mut ctl = lock(&c.control);
            loop {
                if ctl.stop {
                    return;
                }
                let now = Instant::now();
                // Nothing asked for: the periodic pull.
                let at = *ctl.due.get_or_insert(now + CONTACTS_PULL_EVERY);
                if at <= now {
                    break;
                }
                ctl = c
                    .wake
                    .wait_timeout(ctl, at - now)
                    .map(|r| r.0)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            ctl.due = None;
            ctl.password.take()
        };
        // A password given for another user (logged out meanwhile) is not used.
        let user = lock(&shared.login)
            .as_ref()
            .map(|l| l.certificate.user.clone());
        let password = password.filter(|(u, _)| Some(u) == user.as_ref());
        let result =
            shared.sync_contacts(password.as_ref().map(|(_, p)| p.as_str()), Some(&c.cancel));
        if c.stopped() {
            return;
        }
        c.settle(&shared, result, password);
    }
}

impl Contacts {
    /// After a sync: report it, and plan the next one (the pull, or a retry with the same
    /// password while the failure may pass).
    pub fn settle(
        &self,
        shared: &Shared,
        result: Result<ContactsSync, ContactsError>,
        password: Option<(UserName, String)>,
    ) {
        let mut ctl = lock(&self.control);
        match result {
            Ok(done) => {
                ctl.backoff = None;
                if ctl.due.is_none() {
                    ctl.due = Some(Instant::now() + CONTACTS_PULL_EVERY);
                }
                drop(ctl);
                if done.merged || done.stored {
                    shared.events.push(Event::ContactsSynced {
                        version: done.version,
                        merged: done.merged,
                    });
                }
            }
            Err(ContactsError::NotLoggedIn) => {}
            Err(error) => {
                let mut wait = ctl.backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX));
                if let ContactsError::Server(AccountError::Throttled { retry_after }) = &error {
                    wait = wait.max(*retry_after);
                }
                let retry = error.is_transient();
                if retry {
                    ctl.backoff = Some(wait);
                    ctl.password = ctl.password.take().or(password);
                    let at = Instant::now() + wait;
                    ctl.due = Some(ctl.due.map_or(at, |d| d.min(at)));
                    self.wake.notify_all();
                }
                drop(ctl);
                shared.events.push(Event::ContactsSyncFailed {
                    error: Arc::new(error),
                    retry: retry.then_some(wait),
                });
            }
        }
    }
}

impl Shared {
    /// Push the blocked users (their calls are dropped there) and the contacts whose
    /// presence to watch to the running node.
    pub(crate) fn push_contacts(&self) {
        // One push at a time, each with the list as it is once its turn comes: the last
        // one sent holds every edit made before it (lock order: this, then the book, then
        // the client's state).
        let _turn = lock(&self.contacts.pushing);
        let blocked = self.contacts.blocked();
        let watched = self.contacts.watched();
        lock(&self.contacts.seen).retain(|u, _| watched.contains(u));
        if let Some(rt) = self.runtime() {
            rt.command(move |n, now| {
                n.set_blocked(blocked.into_iter().collect());
                n.watch_presence(now, watched);
            });
        }
    }

    /// One connection to the login server running `ops` in order: an event per operation
    /// that got an answer, in order.
    fn operations(
        &self,
        ops: Vec<Operation>,
        cancel: Option<&Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Vec<LoginClientEvent>, ContactsError> {
        let (device, _) = self.store.identity().map_err(|source| ContactsError::Io {
            path: self.store.location(),
            source,
        })?;
        let address = self.network.login_server().to_string();
        let budget = Budget {
            timeout: LOGIN_TIMEOUT,
            cancel: cancel.cloned(),
        };
        let events = run_operations(
            &self.network.file,
            &device,
            client_version(),
            false,
            ops,
            budget,
        )
        .map_err(|e| ContactsError::Server(AccountError::from_connect(e, &address)))?;
        Ok(events
            .into_iter()
            .filter(|e| !matches!(e, LoginClientEvent::VersionChecked(_)))
            .collect())
    }

    /// One exchange with the login server for the buddy list.
    fn list_operation(
        &self,
        op: Operation,
        cancel: Option<&Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<LoginClientEvent, ContactsError> {
        match self.operations(vec![op], cancel)?.pop() {
            Some(
                e @ (LoginClientEvent::BuddyList { .. } | LoginClientEvent::BuddyListStored { .. }),
            ) => Ok(e),
            Some(LoginClientEvent::Failed {
                error: LoginClientError::Refused(Refused::VersionConflict),
                ..
            }) => Err(ContactsError::Conflict),
            Some(LoginClientEvent::Failed { error, .. }) => Err(refused(error)),
            _ => Err(ContactsError::Server(AccountError::Server(
                ServerError::Protocol("no answer".into()),
            ))),
        }
    }

    /// Leave this device's contact requests at the login server, fetch those waiting for the
    /// user (answering what the list already answers: a blocked sender's is dropped, a
    /// contact's is their acceptance), and delete those answered here.
    fn exchange_requests(
        &self,
        certificate: &natter_core::crypto::Certificate,
        cancel: Option<&Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<(), ContactsError> {
        let user = &certificate.user;
        let outbox = self.contacts.with_book(user, |b| b.outbox.clone())?;
        let mut ops: Vec<Operation> = outbox
            .iter()
            .map(|(to, note, accepting)| Operation::SendContactRequest {
                certificate: certificate.clone(),
                to: to.clone(),
                note: note.clone(),
                accepting: *accepting,
            })
            .collect();
        ops.push(Operation::FetchContactRequests {
            certificate: certificate.clone(),
        });
        let events = self.operations(ops, cancel)?;
        // Sent or never sendable: out of the outbox (matched with the note too, so a request
        // made again meanwhile stays).
        let mut done = Vec::new();
        let mut delivered = Vec::new();
        let mut fetched = None;
        let mut fetch_error = None;
        for (i, e) in events.into_iter().enumerate() {
            match (e, outbox.get(i)) {
                (LoginClientEvent::Done, Some(entry)) => {
                    done.push(entry.clone());
                    delivered.push(entry.0.clone());
                }
                (LoginClientEvent::ContactRequests(list), None) => fetched = Some(list),
                (
                    LoginClientEvent::Failed {
                        error: LoginClientError::Refused(why),
                        ..
                    },
                    Some(entry),
                ) if matches!(why, Refused::UnknownUser | Refused::Protocol) => {
                    // Never deliverable: dropped, and said.
                    let to = entry.0.clone();
                    let error = match why {
                        Refused::UnknownUser => ContactsError::UnknownUser(to.to_string()),
                        other => refused(LoginClientError::Refused(other)),
                    };
                    self.events.push(Event::ContactRequestFailed {
                        user: to,
                        error: Arc::new(error),
                    });
                    done.push(entry.clone());
                }
                // Refused for now (the sender's or the recipient's limit): kept, sent again
                // at a later sync.
                (LoginClientEvent::Failed { error, .. }, Some(entry)) => {
                    tracing::info!(to = %entry.0, %error, "contact request not sent yet");
                }
                (LoginClientEvent::Failed { error, .. }, None) => {
                    fetch_error = Some(refused(error));
                }
                _ => {}
            }
        }
        let mut news = Vec::new();
        let answered = self.contacts.with_book(user, |b| {
            // Sent ones leave the outbox even when the fetch failed: never sent twice.
            b.outbox.retain(|entry| !done.contains(entry));
            if let Some(list) = fetched {
                let mut waiting = BTreeMap::new();
                for q in list {
                    if b.answered.contains(&q.id) {
                        continue;
                    }
                    let entry = b.list.get(&q.from);
                    if entry.is_some_and(|e| e.is_blocked()) {
                        b.answered.push(q.id);
                    } else if entry.is_some_and(|e| e.is_contact()) {
                        // A contact already: an acceptance, or any request from a user this
                        // device asked (theirs crossed ours), is said; anything else is
                        // answered (a request this user accepted on another device, whose
                        // deletion has not landed yet).
                        b.answered.push(q.id);
                        let ours = b.asked.remove(&q.from);
                        if q.accepting || ours {
                            news.push(Event::ContactAccepted {
                                user: q.from.clone(),
                            });
                        }
                    } else {
                        if !b.incoming.contains_key(&q.from) {
                            news.push(Event::ContactRequest {
                                from: q.from.clone(),
                                note: q.note.clone(),
                            });
                        }
                        waiting.insert(q.from.clone(), q);
                    }
                }
                b.incoming = waiting;
            }
            self.contacts.save(b)?;
            Ok::<_, ContactsError>(b.answered.clone())
        })??;
        for e in news {
            self.events.push(e);
        }
        // The recipients' online devices fetch what we left now, not at their next pull.
        self.poke(delivered);
        if let Some(e) = fetch_error {
            return Err(e);
        }
        let answered: Vec<u64> = answered.into_iter().take(MAX_REQUESTS_LISTED).collect();
        if answered.is_empty() {
            return Ok(());
        }
        let deleted = self.operations(
            vec![Operation::DeleteContactRequests {
                certificate: certificate.clone(),
                ids: answered.clone(),
            }],
            cancel,
        )?;
        match deleted.into_iter().next() {
            Some(LoginClientEvent::Done) => self.contacts.with_book(user, |b| {
                b.answered.retain(|id| !answered.contains(id));
                self.contacts.save(b)
            })?,
            Some(LoginClientEvent::Failed { error, .. }) => Err(refused(error)),
            _ => Ok(()),
        }
    }

    /// Poke the online devices of these users ([`natter_overlay::node::Node::poke`]), when
    /// the node runs.
    fn poke(&self, users: Vec<UserName>) {
        let Some(rt) = self.runtime() else {
            return;
        };
        for user in users {
            rt.command(move |n, now| n.poke(now, user));
        }
    }

    /// Bring the local list and the backup in the network in step, then exchange contact
    /// requests (see the [module documentation](self)). The requests go even when the list
    /// could not be synced (its error is returned).
    pub(crate) fn sync_contacts(
        &self,
        password: Option<&str>,
        cancel: Option<&Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<ContactsSync, ContactsError> {
        let listed = self.sync_list(password, cancel);
        if matches!(listed, Err(ContactsError::NotLoggedIn)) {
            return listed;
        }
        let certificate = lock(&self.login)
            .as_ref()
            .map(|l| l.certificate.clone())
            .ok_or(ContactsError::NotLoggedIn)?;
        let requests = {
            let _one = lock(&self.contacts.syncing);
            self.exchange_requests(&certificate, cancel)
        };
        if matches!(listed, Ok(ContactsSync { stored: true, .. })) {
            // Our other devices take the new version now rather than at their next pull.
            self.poke(vec![certificate.user.clone()]);
        }
        match (listed, requests) {
            (Ok(done), Err(e)) => {
                // The list is in step even so: said, so that the application reads it again.
                if done.merged || done.stored {
                    self.events.push(Event::ContactsSynced {
                        version: done.version,
                        merged: done.merged,
                    });
                }
                Err(e)
            }
            (listed, _) => listed,
        }
    }

    /// Bring the local list and the backup in the network in step (see the
    /// [module documentation](self)). `password` opens the envelope when this device has no
    /// key yet, and wraps the key when the backup needs a new envelope.
    fn sync_list(
        &self,
        password: Option<&str>,
        cancel: Option<&Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<ContactsSync, ContactsError> {
        let _one = lock(&self.contacts.syncing);
        let certificate = lock(&self.login)
            .as_ref()
            .map(|l| l.certificate.clone())
            .ok_or(ContactsError::NotLoggedIn)?;
        let user = certificate.user.clone();
        let device = certificate.device;
        let io = |source| ContactsError::Io {
            path: self.store.location(),
            source,
        };
        let (identity, _) = self.store.identity().map_err(io)?;
        let trusted = self.network.file.trusted().map_err(|e| {
            ContactsError::Server(AccountError::Server(ServerError::Protocol(e.to_string())))
        })?;
        let mut rng = Rng::from_seed_bytes(os_seed().map_err(io)?);
        // The key from the envelope, and the backup opened with it.
        let open = |sealed: &[u8], k: &ListKey, synced: u64| {
            backup::open(sealed, &user, k, &trusted, synced, device, wall_clock())
        };
        let from_envelope = |sealed: &[u8], wrapped: &[u8], synced: u64| {
            let password = password.ok_or(ContactsError::PasswordNeeded)?;
            let k =
                envelope::unwrap(wrapped, &user, password, StretchParams::FLOOR).map_err(|e| {
                    match e {
                        EnvelopeError::Malformed(d) => {
                            ContactsError::Backup(BackupError::Malformed(d))
                        }
                        _ => ContactsError::KeyUnavailable,
                    }
                })?;
            let opened = open(sealed, &k, synced)?;
            Ok::<_, ContactsError>((k, opened))
        };
        let mut merged = false;
        for _ in 0..MAX_CONFLICTS {
            let LoginClientEvent::BuddyList {
                version,
                backup: sealed,
                envelope: wrapped,
            } = self.list_operation(
                Operation::FetchBuddyList {
                    certificate: certificate.clone(),
                },
                cancel,
            )?
            else {
                unreachable!("a fetch is answered with a list");
            };
            let (mut key, synced, mut rewrap) = self
                .contacts
                .with_book(&user, |b| (b.key.clone(), b.synced, b.rewrap))?;
            if version < synced {
                return Err(ContactsError::Backup(BackupError::RolledBack {
                    seen: synced,
                    found: version,
                }));
            }
            let mut remote = None;
            if version > 0 {
                let opened = match &key {
                    Some(k) => match open(&sealed, k, synced) {
                        // Another install's key won the race to the first backup (or this
                        // device's is wrong): the one in the envelope, with the password.
                        Err(BackupError::Decrypt) => {
                            let (k, o) = from_envelope(&sealed, &wrapped, synced)?;
                            key = Some(k);
                            o
                        }
                        r => r?,
                    },
                    None => {
                        let (k, o) = from_envelope(&sealed, &wrapped, synced)?;
                        key = Some(k);
                        o
                    }
                };
                if opened.version != version {
                    return Err(ContactsError::Backup(BackupError::RolledBack {
                        seen: version,
                        found: opened.version,
                    }));
                }
                if let (Some(p), Some(k), false) = (password, &key, rewrap) {
                    // An envelope still under an older password (its change was not
                    // followed by a rewrap): wrapped again now.
                    rewrap = match envelope::unwrap(&wrapped, &user, p, StretchParams::FLOOR) {
                        Ok(inner) => inner.0 != k.0,
                        Err(_) => true,
                    };
                }
                remote = Some(opened.list);
            }
            // A new envelope needs the password: without it, the rewrap waits (the stored
            // envelope stays) and the list is stored all the same.
            let rewrap_now = rewrap && password.is_some();
            // Merge, and decide whether to store.
            let stored_state = self.contacts.with_book(&user, |b| {
                if key.is_some() {
                    b.key = key.clone();
                }
                // With no backup yet, the first sync that has the password makes the key
                // and its envelope, even for an empty list: later edits need no password.
                let mut ahead =
                    b.list.entries().next().is_some() || (key.is_none() && password.is_some());
                if let Some(r) = &remote {
                    merged |= b.list.merge(r);
                    ahead = r.clone().merge(&b.list);
                }
                if merged {
                    // A block merged in from another device drops that user's request here.
                    let blocked: Vec<UserName> = b
                        .incoming
                        .keys()
                        .filter(|u| b.list.is_blocked(u))
                        .cloned()
                        .collect();
                    for u in blocked {
                        b.answered.extend(b.incoming.remove(&u).map(|q| q.id));
                    }
                }
                if !(ahead || rewrap_now) {
                    b.synced = version;
                }
                self.contacts.save(b)?;
                Ok::<_, ContactsError>((ahead || rewrap_now).then(|| b.list.clone()))
            })??;
            if merged {
                self.push_contacts();
            }
            let Some(list) = stored_state else {
                return Ok(ContactsSync {
                    version,
                    merged,
                    stored: false,
                });
            };
            let fresh = key.is_none();
            let key = key.unwrap_or_else(|| ListKey(rng.bytes32()));
            let wrapped = match (fresh || rewrap_now, password) {
                (true, Some(p)) => envelope::wrap(&key, &user, p, StretchParams::DEFAULT, &mut rng)
                    .expect("the default stretch parameters are valid"),
                (true, None) => return Err(ContactsError::PasswordNeeded),
                (false, _) => Vec::new(),
            };
            let next = version + 1;
            let sealed = backup::seal(
                &list,
                next,
                &key,
                &identity,
                &certificate,
                wall_clock(),
                &mut rng,
            )
            .map_err(ContactsError::Backup)?;
            match self.list_operation(
                Operation::StoreBuddyList {
                    certificate: certificate.clone(),
                    base: version,
                    version: next,
                    backup: sealed,
                    envelope: wrapped,
                },
                cancel,
            ) {
                Ok(_) => {
                    self.contacts.with_book(&user, |b| {
                        b.key = Some(key);
                        b.synced = next;
                        if rewrap_now {
                            b.rewrap = false;
                        }
                        self.contacts.save(b)
                    })??;
                    return Ok(ContactsSync {
                        version: next,
                        merged,
                        stored: true,
                    });
                }
                Err(ContactsError::Conflict) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ContactsError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book {
        let device = DeviceId([7; 16]);
        let mut b = Book::new(UserName::parse("alice").unwrap(), device);
        let bob = UserName::parse("bob").unwrap();
        b.list.set_contact(&bob, true, 1_000).unwrap();
        b.list.set_nickname(&bob, "Bobby", 1_001).unwrap();
        b.key = Some(ListKey([3; 32]));
        b.synced = 42;
        b.rewrap = true;
        b.outbox.push((bob.clone(), "hi ✓".into(), true));
        b.answered.extend([5, 9]);
        b.asked.insert(bob.clone());
        let carol = UserName::parse("carol").unwrap();
        b.incoming.insert(
            carol.clone(),
            ContactRequest {
                id: 11,
                from: carol,
                note: String::new(),
                sent_at: UnixTime(77),
                accepting: false,
            },
        );
        b
    }

    #[test]
    fn the_file_reads_back_as_written() {
        let b = book();
        let data = b.encode().unwrap();
        let back = Book::decode(&data, b.list.device()).unwrap();
        assert_eq!(back.user, b.user);
        assert_eq!(back.list.encode().unwrap(), b.list.encode().unwrap());
        assert_eq!(back.key.map(|k| k.0), b.key.map(|k| k.0));
        assert_eq!((back.synced, back.rewrap), (42, true));
        assert_eq!(back.outbox, b.outbox);
        assert_eq!(back.answered, b.answered);
        assert_eq!(back.incoming, b.incoming);
        assert_eq!(back.asked, b.asked);
    }

    #[test]
    fn a_damaged_file_is_refused_without_a_panic() {
        let data = book().encode().unwrap();
        let device = DeviceId([7; 16]);
        for cut in 0..data.len() {
            // Every truncation but the whole file is refused (the list must be complete).
            assert!(Book::decode(&data[..cut], device).is_none(), "cut at {cut}");
        }
        let mut rng = Rng::from_seed(9);
        for _ in 0..2000 {
            let mut bad = data.clone();
            let i = (rng.u32() as usize) % bad.len();
            bad[i] ^= 1 << (rng.u32() % 8);
            let _ = Book::decode(&bad, device);
        }
    }

    #[test]
    fn stamps_far_ahead_of_the_clock_still_read_from_this_devices_own_file() {
        let device = DeviceId([7; 16]);
        let mut b = Book::new(UserName::parse("alice").unwrap(), device);
        let far = now_ms() + 10 * natter_core::contacts::list::MAX_AHEAD_MS;
        b.list
            .set_contact(&UserName::parse("bob").unwrap(), true, far)
            .unwrap();
        assert!(Book::decode(&b.encode().unwrap(), device).is_some());
    }
}
