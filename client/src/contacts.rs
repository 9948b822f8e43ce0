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
//! after a password change (the key is wrapped again under the new password), and every
//! [`CONTACTS_PULL_EVERY`] while logged in; [`Client::sync_contacts`](crate::Client::sync_contacts)
//! runs one now. A refused backup (tampered, truncated, rolled back, another account's)
//! leaves the local list as it was.

use std::collections::BTreeMap;
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
use natter_transport::{os_seed, wall_clock};

use crate::client::{client_version, lock, Shared, LOGIN_TIMEOUT};
use crate::error::{AccountError, ContactsError, ServerError};
use crate::events::Event;

/// How often a logged-in client fetches the backup to learn its other devices' edits.
pub const CONTACTS_PULL_EVERY: Duration = Duration::from_secs(600);
/// How long after an edit its sync starts (edits in a burst go out together).
const EDIT_DELAY: Duration = Duration::from_millis(300);
/// The first wait before a failed sync is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between tries of a failed sync.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Version conflicts one sync takes (each means another device stored meanwhile) before it
/// gives up for now.
const MAX_CONFLICTS: usize = 4;
/// The local file's first bytes.
const MAGIC: &[u8; 4] = b"NCT1";
const FLAG_DIRTY: u8 = 1;
const FLAG_REWRAP: u8 = 2;
const FLAG_KEY: u8 = 4;

/// One user in the buddy list: a contact, a blocked user, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contact {
    /// The user.
    pub user: UserName,
    /// Whether the user is a contact (false: only blocked).
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
fn view(b: &Book, user: &UserName) -> Option<Contact> {
    let entry = b
        .list
        .get(user)
        .filter(|e| e.is_contact() || e.is_blocked());
    let request = b.incoming.get(user).map(|q| q.note.clone());
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
    /// Edits not stored in the network yet.
    dirty: bool,
    /// The envelope must be wrapped again (under a changed password).
    rewrap: bool,
    /// Edits made in this run: a sync clears `dirty` only if none came in meanwhile.
    edits: u64,
    /// Contact requests to leave at the login server: user, note.
    outbox: Vec<(UserName, String)>,
    /// Ids of requests to us answered here (accepted, declined, blocked): to delete there.
    answered: Vec<u64>,
    /// Requests to us waiting for an answer, as the server last listed them.
    incoming: BTreeMap<UserName, ContactRequest>,
}

impl Book {
    fn new(user: UserName, device: DeviceId) -> Self {
        Book {
            user,
            list: BuddyList::new(device),
            key: None,
            synced: 0,
            dirty: false,
            rewrap: false,
            edits: 0,
            outbox: Vec::new(),
            answered: Vec::new(),
            incoming: BTreeMap::new(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, ContactsError> {
        let list = self.list.encode().map_err(ContactsError::Edit)?;
        let mut out = Vec::with_capacity(list.len() + 80);
        out.extend_from_slice(MAGIC);
        let mut flags = 0;
        if self.dirty {
            flags |= FLAG_DIRTY;
        }
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
        for (to, note) in &self.outbox {
            put_name(&mut out, to);
            put_note(&mut out, note);
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
        }
        out.extend_from_slice(&list);
        Ok(out)
    }

    fn decode(buf: &[u8], device: DeviceId, now_ms: u64) -> Option<Book> {
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
            .map(|_| Some((read_name(&mut r)?, read_note(&mut r)?)))
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
                };
                Some((q.from.clone(), q))
            })
            .collect::<Option<_>>()?;
        let list = BuddyList::decode(r.rest(), device, now_ms).ok()?;
        Some(Book {
            user,
            list,
            key,
            synced,
            dirty: flags & FLAG_DIRTY != 0,
            rewrap: flags & FLAG_REWRAP != 0,
            edits: 0,
            outbox,
            answered,
            incoming,
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
    /// The password to use in the next sync (given at login, or the new one after a
    /// password change); dropped after it.
    password: Option<String>,
    /// The wait before the next try of a failed sync.
    backoff: Option<Duration>,
    stop: bool,
}

/// The buddy list of a client, and the thread that keeps its backup in step.
pub(crate) struct Contacts {
    path: Option<PathBuf>,
    book: Mutex<Option<Book>>,
    /// Held for a whole sync: one at a time.
    syncing: Mutex<()>,
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
            path: data_dir.map(|d| d.join("contacts.bin")),
            book: Mutex::new(None),
            syncing: Mutex::new(()),
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
        let loaded = self.path.as_deref().and_then(|p| {
            let data = std::fs::read(p).ok()?;
            let b = Book::decode(&data, device, now_ms());
            if b.is_none() {
                // Kept aside, not lost: the backup in the network restores the list.
                let aside = p.with_extension("unreadable");
                tracing::warn!(path = %p.display(), kept = %aside.display(),
                    "buddy list file unreadable; restoring from the network");
                let _ = std::fs::rename(p, aside);
            }
            b
        });
        *book = Some(match loaded {
            Some(b) if &b.user == user => b,
            _ => Book::new(user.clone(), device),
        });
    }

    /// Drop the list from memory (logged out); its file stays.
    pub fn forget(&self) {
        *lock(&self.book) = None;
    }

    fn save(&self, book: &Book) -> Result<(), ContactsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |source| ContactsError::Io {
            path: path.clone(),
            source,
        };
        let data = book.encode()?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
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
        users.into_iter().filter_map(|u| view(b, u)).collect()
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
        if view(b, user) == view(&before, user) {
            *b = before;
            return Ok(false);
        }
        if b.list != before.list {
            b.dirty = true;
            b.edits += 1;
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
        self.edit_book(user, |b, now| {
            let answering = b.incoming.remove(user);
            if !b.list.is_contact(user) || answering.is_some() {
                b.list.set_contact(user, true, now)?;
                b.outbox.retain(|(u, _)| u != user);
                b.outbox.push((user.clone(), note.to_string()));
            }
            b.answered.extend(answering.map(|q| q.id));
            Ok(())
        })
    }

    /// Remove `user` from the list (a request to them not sent yet is not sent).
    pub fn remove(&self, user: &UserName) -> Result<bool, ContactsError> {
        self.edit_book(user, |b, now| {
            b.outbox.retain(|(u, _)| u != user);
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
    /// if given.
    pub fn schedule(&self, after: Duration, password: Option<String>) {
        let mut c = lock(&self.control);
        let at = Instant::now() + after;
        c.due = Some(c.due.map_or(at, |d| d.min(at)));
        if password.is_some() {
            c.password = password;
            c.backoff = None;
        }
        self.wake.notify_all();
    }

    /// Mark the envelope for wrapping again under the new password, and sync with it.
    pub fn password_changed(&self, new: &str) {
        if let Some(b) = lock(&self.book).as_mut() {
            b.rewrap = true;
            let _ = self.save(b);
        }
        self.schedule(Duration::ZERO, Some(new.to_string()));
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
                match ctl.due {
                    Some(at) if at <= now => break,
                    Some(at) => {
                        ctl = c
                            .wake
                            .wait_timeout(ctl, at - now)
                            .map(|r| r.0)
                            .unwrap_or_else(|e| e.into_inner().0)
                    }
                    None => {
                        ctl = c
                            .wake
                            .wait_timeout(ctl, CONTACTS_PULL_EVERY)
                            .map(|r| r.0)
                            .unwrap_or_else(|e| e.into_inner().0)
                    }
                }
                if ctl.due.is_none() && !ctl.stop {
                    // Woken by the pull period, or spuriously: pull if logged in.
                    ctl.due = Some(Instant::now() + CONTACTS_PULL_EVERY);
                }
            }
            ctl.due = None;
            ctl.password.take()
        };
        let result = shared.sync_contacts(password.as_deref(), Some(&c.cancel));
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
        password: Option<String>,
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
                let wait = ctl.backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX));
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
    /// Push the blocked users to the running node (their calls are dropped there).
    pub(crate) fn push_blocked(&self) {
        if let Some(rt) = self.runtime() {
            let blocked = self.contacts.blocked();
            rt.command(move |n, _| n.set_blocked(blocked.into_iter().collect()));
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
        let outbox = lock(&self.contacts.book)
            .as_ref()
            .map(|b| b.outbox.clone())
            .ok_or(ContactsError::NotLoggedIn)?;
        let mut ops: Vec<Operation> = outbox
            .iter()
            .map(|(to, note)| Operation::SendContactRequest {
                certificate: certificate.clone(),
                to: to.clone(),
                note: note.clone(),
            })
            .collect();
        ops.push(Operation::FetchContactRequests {
            certificate: certificate.clone(),
        });
        let events = self.operations(ops, cancel)?;
        let mut sent = Vec::new();
        let mut first_error = None;
        let mut fetched = None;
        for (i, e) in events.into_iter().enumerate() {
            let to = outbox.get(i).map(|(u, _)| u.clone());
            match (e, to) {
                (LoginClientEvent::Done, Some(to)) => sent.push(to),
                (LoginClientEvent::ContactRequests(list), None) => fetched = Some(list),
                (
                    LoginClientEvent::Failed {
                        error: LoginClientError::Refused(Refused::UnknownUser),
                        ..
                    },
                    Some(to),
                ) => {
                    // Never deliverable: dropped, and said.
                    self.events.push(Event::ContactRequestFailed {
                        user: to.clone(),
                        error: Arc::new(ContactsError::UnknownUser(to.to_string())),
                    });
                    sent.push(to);
                }
                (LoginClientEvent::Failed { error, .. }, _) => {
                    first_error.get_or_insert(refused(error));
                }
                _ => {}
            }
        }
        let mut news = Vec::new();
        let answered = {
            let mut book = lock(&self.contacts.book);
            let b = book.as_mut().ok_or(ContactsError::NotLoggedIn)?;
            b.outbox.retain(|(u, _)| !sent.contains(u));
            if let Some(list) = fetched {
                let mut waiting = BTreeMap::new();
                for q in list {
                    if b.answered.contains(&q.id) {
                        continue;
                    }
                    if b.list.is_blocked(&q.from) {
                        b.answered.push(q.id);
                    } else if b.list.is_contact(&q.from) {
                        // We asked them (or they are a contact already): their request is
                        // their acceptance.
                        b.answered.push(q.id);
                        news.push(Event::ContactAccepted {
                            user: q.from.clone(),
                        });
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
            b.answered.clone()
        };
        for e in news {
            self.events.push(e);
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let answered: Vec<u64> = answered.into_iter().take(MAX_REQUESTS_LISTED).collect();
        if !answered.is_empty() {
            let done = self.operations(
                vec![Operation::DeleteContactRequests {
                    certificate: certificate.clone(),
                    ids: answered.clone(),
                }],
                cancel,
            )?;
            match done.into_iter().next() {
                Some(LoginClientEvent::Done) => {
                    let mut book = lock(&self.contacts.book);
                    if let Some(b) = book.as_mut() {
                        b.answered.retain(|id| !answered.contains(id));
                        self.contacts.save(b)?;
                    }
                }
                Some(LoginClientEvent::Failed { error, .. }) => return Err(refused(error)),
                _ => {}
            }
        }
        Ok(())
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
        let done = listed?;
        requests.map(|()| done)
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
        self.contacts.open(&user, device);
        let (identity, _) = self.store.identity().map_err(|source| ContactsError::Io {
            path: self.store.location(),
            source,
        })?;
        let trusted = self.network.file.trusted().map_err(|e| {
            ContactsError::Server(AccountError::Server(ServerError::Protocol(e.to_string())))
        })?;
        let seed = os_seed().map_err(|source| ContactsError::Io {
            path: self.store.location(),
            source,
        })?;
        let mut rng = Rng::from_seed_bytes(seed);
        let unwrap_key = |envelope: &[u8]| -> Result<ListKey, ContactsError> {
            let password = password.ok_or(ContactsError::PasswordNeeded)?;
            envelope::unwrap(envelope, &user, password, StretchParams::FLOOR).map_err(|e| match e {
                EnvelopeError::Malformed(d) => ContactsError::Backup(BackupError::Malformed(d)),
                _ => ContactsError::KeyUnavailable,
            })
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
            let (key, synced, mut rewrap) = {
                let book = lock(&self.contacts.book);
                let b = book.as_ref().ok_or(ContactsError::NotLoggedIn)?;
                (b.key.clone(), b.synced, b.rewrap)
            };
            if version < synced {
                return Err(ContactsError::Backup(BackupError::RolledBack {
                    seen: synced,
                    found: version,
                }));
            }
            let mut remote = None;
            let mut key = key;
            if version > 0 {
                let open = |k: &ListKey| {
                    backup::open(&sealed, &user, k, &trusted, synced, device, wall_clock())
                };
                let opened = match &key {
                    Some(k) => match open(k) {
                        // Another install's key won the race to the first backup: take
                        // it from the envelope.
                        Err(BackupError::Decrypt) if password.is_some() => {
                            let k = unwrap_key(&wrapped)?;
                            let o = open(&k)?;
                            key = Some(k);
                            o
                        }
                        r => r?,
                    },
                    None => {
                        let k = unwrap_key(&wrapped)?;
                        let o = open(&k)?;
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
            // Merge, and decide whether to store.
            let (list, edits) = {
                let mut book = lock(&self.contacts.book);
                let b = book.as_mut().ok_or(ContactsError::NotLoggedIn)?;
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
                if !ahead && !rewrap {
                    b.synced = version;
                    b.dirty = false;
                    self.contacts.save(b)?;
                    drop(book);
                    if merged {
                        self.push_blocked();
                    }
                    return Ok(ContactsSync {
                        version,
                        merged,
                        stored: false,
                    });
                }
                self.contacts.save(b)?;
                (b.list.clone(), b.edits)
            };
            if merged {
                self.push_blocked();
            }
            let fresh = key.is_none();
            let key = key.unwrap_or_else(|| ListKey(rng.bytes32()));
            let wrapped = if fresh || rewrap {
                let p = password.ok_or(ContactsError::PasswordNeeded)?;
                envelope::wrap(&key, &user, p, StretchParams::DEFAULT, &mut rng)
                    .expect("the default stretch parameters are valid")
            } else {
                Vec::new()
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
                    let mut book = lock(&self.contacts.book);
                    let b = book.as_mut().ok_or(ContactsError::NotLoggedIn)?;
                    b.key = Some(key);
                    b.synced = next;
                    b.rewrap = false;
                    if b.edits == edits {
                        b.dirty = false;
                    }
                    self.contacts.save(b)?;
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
