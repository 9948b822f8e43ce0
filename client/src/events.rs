//! What a client tells the application: [`Event`], and the queue they wait in, [`Events`].

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use natter_core::crypto::{DeviceId, UserName};
use natter_core::overlay::{LinkTransport, NatType};

use crate::audio::AudioDevice;
use crate::call::Call;
use crate::chat::{ChatMessage, MessageStatus};
use crate::client::LoginInfo;
use crate::error::{ContactsError, LoginError, RegisterError};
use crate::presence::Availability;
use crate::types::{
    CallId, CallStats, EndReason, NodeRole, PathInfo, RequestId, SearchId, SearchOutcome,
};
use natter_core::chat::MessageId;

/// Something that happened to a client: joining the network, searches, calls.
///
/// `Display` says it in words for people (`attached to super node 192.0.2.1:4000 over TCP`);
/// match on the variants in programs. More variants come in later versions (contacts,
/// presence, chat, file transfer, conferences): keep a `_ => {}` arm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A round of looking for super nodes started.
    Connecting {
        /// Super nodes probed.
        candidates: usize,
    },
    /// UDP probes went unanswered: the node reaches super nodes over TCP only.
    UdpBlocked,
    /// Attached to a super node.
    Attached {
        /// Its address.
        super_node: SocketAddr,
        /// How the link runs: TCP to its main port, its fallback port, or TLS.
        transport: LinkTransport,
        /// This node's address as the super node sees it.
        seen_as: SocketAddr,
        /// The round-trip time of the UDP probe, when UDP answered.
        rtt: Option<Duration>,
        /// Super nodes attached now.
        attached: usize,
    },
    /// Lost a super node (the node looks for another by itself).
    Detached {
        /// Its address.
        super_node: SocketAddr,
        /// Super nodes attached now.
        attached: usize,
    },
    /// No super node is attached, and a round of attempts found none: the node is cut off
    /// from the network for now, and keeps trying (0.5 s doubling to 30 s). Sent once when
    /// that happens, again only after a super node attached in between (never while one is
    /// attached, e.g. to a network's only super node).
    NoSuperNode {
        /// Super nodes attached (0).
        attached: usize,
    },
    /// The NAT type was (re)detected.
    NatDetected {
        /// The NAT.
        nat: NatType,
        /// This node's public address, as a super node saw it.
        mapped: Option<SocketAddr>,
        /// How long the probe took.
        took: Duration,
    },
    /// The node became a super node, or gave the role up.
    RoleChanged {
        /// What it is now.
        role: NodeRole,
    },
    /// The device's certificate was renewed in the background. An application that keeps the
    /// device's [`Credentials`](crate::Credentials) itself exports them again
    /// ([`Client::credentials`](crate::Client::credentials)).
    CertificateRenewed,
    /// A login started with [`Client::begin_login`](crate::Client::begin_login) ended: what
    /// [`Client::login`](crate::Client::login) would have returned
    /// ([`LoginError::Cancelled`](crate::LoginError::Cancelled) after
    /// [`Client::cancel_request`](crate::Client::cancel_request)).
    LoginFinished {
        /// Which request.
        request: RequestId,
        /// The user name asked for.
        user: String,
        /// What it gave (boxed: events stay small).
        result: Result<Box<LoginInfo>, Arc<LoginError>>,
    },
    /// A registration started with [`Client::begin_register`](crate::Client::begin_register)
    /// ended: what [`Client::register`](crate::Client::register) would have returned.
    RegisterFinished {
        /// Which request.
        request: RequestId,
        /// The user name asked for.
        user: String,
        /// What it gave.
        result: Result<(), Arc<RegisterError>>,
    },
    /// The certificate can no longer be renewed without the password: call
    /// [`Client::login`](crate::Client::login) with it (the node keeps running until the
    /// certificate expires).
    LoginRequired,
    /// The login authority revoked devices; the node refuses them from now on.
    DevicesRevoked {
        /// How many.
        count: usize,
    },
    /// The buddy list is in step with its backup in the network after a sync that changed
    /// something: other devices' edits came in (`merged`: read
    /// [`Client::contacts`](crate::Client::contacts) again), or this device stored its own.
    ContactsSynced {
        /// The backup's version now.
        version: u64,
        /// The list changed by other devices' edits.
        merged: bool,
    },
    /// Someone asks to be this user's contact (once per request, on every device of the
    /// user). Answer with [`Client::add_contact`](crate::Client::add_contact) (accept) or
    /// [`Client::decline_contact`](crate::Client::decline_contact), or leave it: it waits,
    /// in [`Client::contacts`](crate::Client::contacts) as the entry's `request`. Requests
    /// from blocked users never come.
    ContactRequest {
        /// Who asks.
        from: UserName,
        /// Their note (at most 1 KiB).
        note: String,
    },
    /// A user this user asked accepted (their answer arrived).
    ContactAccepted {
        /// Who.
        user: UserName,
    },
    /// A contact's presence changed, as their super nodes pushed it (within a second or two
    /// of the change; a device that vanished without a word within a minute). Also once
    /// when it is first known after login. Read it any time as
    /// [`Contact::availability`](crate::Contact::availability).
    ContactPresence {
        /// The contact.
        user: UserName,
        /// `Online` or `Offline` (away, do not disturb and the mood are not shown to contacts
        /// yet).
        availability: Availability,
    },
    /// A chat message arrived: from another user, or written by this user on another of
    /// their devices (`message.outgoing`). Reported once per message; it is in the history
    /// already ([`Client::history`](crate::Client::history)).
    MessageReceived {
        /// The message.
        message: Box<ChatMessage>,
    },
    /// A message written here moved on: sent, delivered (a device of the recipient holds
    /// it), read, or failed.
    MessageStatus {
        /// The message.
        id: MessageId,
        /// The other user of its conversation.
        with: UserName,
        /// Where it stands now.
        status: MessageStatus,
    },
    /// A contact request could not be delivered, ever (no such user): it was dropped.
    ContactRequestFailed {
        /// The user asked.
        user: UserName,
        /// Why.
        error: Arc<ContactsError>,
    },
    /// A background sync of the buddy list failed; the local list is kept, edits included.
    ContactsSyncFailed {
        /// Why ([`ContactsError::PasswordNeeded`]: call
        /// [`Client::sync_contacts`](crate::Client::sync_contacts) with the password).
        error: Arc<ContactsError>,
        /// When it is tried again by itself (`None`: not before the next login, edit,
        /// explicit sync or periodic pull, [`CONTACTS_PULL_EVERY`](crate::CONTACTS_PULL_EVERY)).
        retry: Option<Duration>,
    },
    /// A search started with [`Client::search`](crate::Client::search) ended.
    SearchResult {
        /// Which search.
        search: SearchId,
        /// Who was searched for.
        user: UserName,
        /// What was found.
        outcome: Box<SearchOutcome>,
    },
    /// A call rings here: [`Call::answer`] or [`Call::decline`] it.
    IncomingCall {
        /// The call.
        call: Call,
        /// The caller.
        from: UserName,
        /// The caller's device.
        device: DeviceId,
    },
    /// The outgoing call is placed: every online device of the callee is invited.
    CallPlaced {
        /// The call.
        call: CallId,
    },
    /// The outgoing call rings on one of the callee's devices (once per device).
    Ringing {
        /// The call.
        call: CallId,
        /// The ringing device.
        device: DeviceId,
    },
    /// The call is connected; its audio starts.
    CallConnected {
        /// The call.
        call: CallId,
        /// The other side's device.
        device: DeviceId,
        /// Time since the dial (the callee's search included) or since the call rang here.
        setup: Duration,
    },
    /// The call's media path changed (the first one included: calls start relayed by the
    /// callee's super node and move to a direct path when one works).
    CallPath {
        /// The call.
        call: CallId,
        /// The new path.
        path: Box<PathInfo>,
    },
    /// The first media frame of the call arrived.
    FirstMedia {
        /// The call.
        call: CallId,
        /// Time since the dial or since the call rang here.
        after: Duration,
    },
    /// Media resumed after an interruption of 100 ms or more (a path switch, a burst of loss).
    MediaGap {
        /// The call.
        call: CallId,
        /// How long nothing arrived.
        gap: Duration,
    },
    /// Fresh statistics of a connected call, about once a second.
    CallStats {
        /// The call.
        call: CallId,
        /// Its statistics now.
        stats: Box<CallStats>,
    },
    /// The call's hold state changed; no audio flows while either side holds it.
    CallHoldChanged {
        /// The call.
        call: CallId,
        /// This side holds it.
        local: bool,
        /// The other side holds it.
        remote: bool,
    },
    /// Both sides called each other at once: the two calls became one, which goes on under
    /// this call's id (answered automatically).
    CallMerged {
        /// The call.
        call: CallId,
    },
    /// The call ended. Its statistics stay readable for a while
    /// ([`Call::stats`], final figures).
    CallEnded {
        /// The call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
    /// Someone called while this device was in a call; they were told it is busy.
    MissedBusy {
        /// The refused call (ended at once).
        call: CallId,
        /// The caller.
        from: UserName,
    },
    /// The system's audio devices changed (one was plugged in or out), with
    /// [`AudioConfig::watch_devices`](crate::AudioConfig::watch_devices): list them again
    /// with [`audio_devices`](crate::audio_devices). A call whose device went away goes on
    /// with silence; switch it with [`Call::set_microphone`] or [`Call::set_speaker`].
    AudioDevicesChanged {
        /// Devices that appeared.
        added: Vec<AudioDevice>,
        /// Devices that went away.
        removed: Vec<AudioDevice>,
    },
    /// A call's audio could not use what was asked (a device, a file): it goes on with
    /// silence in its place.
    AudioError {
        /// The call.
        call: CallId,
        /// What went wrong.
        error: AudioError,
    },
}

/// What went wrong with a call's audio (the call goes on; see [`Event::AudioError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// The microphone could not be opened: silence (or a test tone, with
    /// [`AudioConfig::tone_without_microphone`](crate::AudioConfig::tone_without_microphone))
    /// is sent instead.
    #[error("no microphone ({reason}): sending {instead}")]
    Microphone {
        /// Why.
        reason: String,
        /// What is sent instead: `silence` or `a 440 Hz test tone`.
        instead: &'static str,
    },
    /// The speaker could not be opened: what arrives is not played.
    #[error("no speaker ({reason}): what arrives is not played")]
    Speaker {
        /// Why.
        reason: String,
    },
    /// A WAV file could not be read or created.
    #[error("{}: {reason}", path.display())]
    Wav {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The audio engine could not start: the call has no audio.
    #[error("call audio: {0}")]
    Engine(String),
    /// The system's audio devices could not be listed.
    #[error("listing audio devices: {0}")]
    Devices(String),
}

fn transport_name(t: LinkTransport) -> &'static str {
    match t {
        LinkTransport::Tcp => "TCP",
        LinkTransport::TcpFallback => "TCP on its fallback port",
        LinkTransport::Tls => "TLS",
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Connecting { candidates } => {
                write!(f, "connecting: probing {candidates} super nodes")
            }
            Event::UdpBlocked => f.write_str("UDP seems blocked: connecting over TCP"),
            Event::Attached {
                super_node,
                transport,
                seen_as,
                rtt,
                ..
            } => {
                write!(
                    f,
                    "attached to super node {super_node} over {} (seen as {seen_as}",
                    transport_name(*transport)
                )?;
                if let Some(r) = rtt {
                    write!(f, ", UDP RTT {}", ms(*r))?;
                }
                f.write_str(")")
            }
            Event::Detached { super_node, .. } => write!(f, "lost super node {super_node}"),
            Event::NoSuperNode { .. } => f.write_str("no super node reachable yet"),
            Event::NatDetected { nat, mapped, took } => {
                write!(
                    f,
                    "NAT: {} (mapped address {}, probed in {:.0} ms)",
                    nat.describe().trim_start_matches("NAT: "),
                    mapped.map_or_else(|| "-".to_string(), |m| m.to_string()),
                    took.as_secs_f64() * 1000.0
                )
            }
            Event::RoleChanged {
                role: NodeRole::SuperNode,
            } => f.write_str("promoted to super node"),
            Event::RoleChanged { .. } => f.write_str("gave up the super-node role"),
            Event::CertificateRenewed => f.write_str("certificate renewed"),
            Event::AudioDevicesChanged { added, removed } => {
                let names = |l: &[AudioDevice]| {
                    l.iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                f.write_str("audio devices changed")?;
                if !added.is_empty() {
                    write!(f, "; added: {}", names(added))?;
                }
                if !removed.is_empty() {
                    write!(f, "; removed: {}", names(removed))?;
                }
                Ok(())
            }
            Event::LoginFinished {
                result: Ok(info), ..
            } => write!(f, "logged in as {} on device {}", info.user, info.device),
            Event::LoginFinished {
                user,
                result: Err(e),
                ..
            } => write!(f, "logging {user} in failed: {e}"),
            Event::RegisterFinished {
                user,
                result: Ok(()),
                ..
            } => write!(f, "registered {user}"),
            Event::RegisterFinished {
                user,
                result: Err(e),
                ..
            } => write!(f, "registering {user} failed: {e}"),
            Event::LoginRequired => f.write_str(
                "the certificate can no longer be renewed without the password: log in again",
            ),
            Event::DevicesRevoked { count } => {
                write!(f, "{count} device(s) revoked by the login authority")
            }
            Event::ContactsSynced { version, merged } => match merged {
                true => write!(
                    f,
                    "buddy list updated from other devices (backup version {version})"
                ),
                false => write!(f, "buddy list backed up (version {version})"),
            },
            Event::ContactRequest { from, note } => match note.is_empty() {
                true => write!(f, "{from} asks to be your contact"),
                false => write!(f, "{from} asks to be your contact: {note:?}"),
            },
            Event::ContactAccepted { user } => write!(f, "{user} accepted: now a contact"),
            Event::ContactPresence { user, availability } => {
                write!(f, "{user} is {}", availability.name())
            }
            Event::MessageReceived { message } => match message.outgoing {
                true => write!(
                    f,
                    "you (another device) to {}: {:?}",
                    message.with, message.text
                ),
                false => write!(f, "{}: {:?}", message.author, message.text),
            },
            Event::MessageStatus { id, with, status } => {
                write!(f, "message {} to {with}: {}", id.to_hex(), status.name())
            }
            Event::ContactRequestFailed { user, error } => {
                write!(f, "the contact request to {user} failed: {error}")
            }
            Event::ContactsSyncFailed { error, retry } => {
                write!(f, "buddy list sync failed: {error}")?;
                match retry {
                    Some(after) => write!(f, "; trying again in {} s", after.as_secs()),
                    None => Ok(()),
                }
            }
            Event::SearchResult { user, outcome, .. } => match &outcome.found {
                crate::types::Found::Devices(_) => write!(
                    f,
                    "found {user}: {}",
                    outcome.to_string().trim_start_matches("found: ")
                ),
                _ => write!(f, "{user}: {outcome}"),
            },
            Event::IncomingCall { from, device, .. } => {
                write!(f, "incoming call from {from} (device {device})")
            }
            Event::CallPlaced { call } => write!(f, "{call}: calling"),
            Event::Ringing { call, device } => write!(f, "{call}: ringing on device {device}"),
            Event::CallConnected {
                call,
                device,
                setup,
            } => write!(
                f,
                "{call}: connected to device {device}, signalling took {}",
                ms(*setup)
            ),
            Event::CallPath { call, path } => write!(f, "{call}: path {path}"),
            Event::FirstMedia { call, after } => write!(
                f,
                "{call}: first media received {} after the call started",
                ms(*after)
            ),
            Event::MediaGap { call, gap } => write!(
                f,
                "{call}: media resumed after a gap of {:.0} ms",
                gap.as_secs_f64() * 1000.0
            ),
            Event::CallStats { call, stats } => write!(f, "{call}: {stats}"),
            Event::CallHoldChanged {
                call,
                local,
                remote,
            } => {
                let who = match (local, remote) {
                    (false, false) => "no longer on hold",
                    (true, false) => "on hold here",
                    (false, true) => "on hold by the other side",
                    (true, true) => "on hold on both sides",
                };
                write!(f, "{call}: {who}")
            }
            Event::CallMerged { call } => {
                write!(f, "{call}: both sides called at once; the calls became one")
            }
            Event::CallEnded { call, reason } => write!(f, "{call} ended: {reason}"),
            Event::MissedBusy { from, .. } => {
                write!(f, "{from} called while this device was busy")
            }
            Event::AudioError { call, error } => write!(f, "{call}: {error}"),
        }
    }
}

/// Most events a queue holds; beyond it the oldest is dropped (and counted in
/// [`Events::dropped`]).
pub const MAX_QUEUED: usize = 4096;

struct Queue {
    items: VecDeque<Event>,
    dropped: u64,
    closed: bool,
    #[cfg(feature = "async")]
    wakers: Vec<std::task::Waker>,
}

struct Inner {
    q: Mutex<Queue>,
    ready: Condvar,
    /// One end of a socket pair holding one byte exactly while events wait (Unix).
    #[cfg(unix)]
    signal: (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
}

/// A client's events, in order: the receiving end of its queue.
///
/// Each event is taken by exactly one receiver: clones of `Events` (and the event stream of
/// the `async` feature) share one queue. Take them with [`Events::recv`] (blocking),
/// [`Events::recv_timeout`], [`Events::try_recv`], or from your own event loop: on Unix,
/// `Events` is [`AsFd`](std::os::fd::AsFd), a file descriptor that is readable exactly
/// while events wait. When the client is closed (or dropped), receivers get the events
/// still queued, then `Disconnected`.
///
/// The queue holds [`MAX_QUEUED`] events; past that the oldest is dropped and counted
/// ([`Events::dropped`]), so a client nobody listens to does not grow without bound.
///
/// ```
/// # let net = natter_fixtures::TestNet::start();
/// # let client = net.client("alice");
/// use std::time::Duration;
/// use natter::Event;
///
/// let search = client.search("alice")?;
/// let events = client.events();
/// while let Ok(event) = events.recv_timeout(Duration::from_secs(10)) {
///     println!("{event}"); // "found alice: device 3f0c... online via 127.0.0.1:40211 (...)"
///     if let Event::SearchResult { search: id, outcome, .. } = event {
///         assert_eq!(id, search);
///         assert_eq!(outcome.online(), 1);
///         break;
///     }
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = self.lock();
        f.debug_struct("Events")
            .field("queued", &q.items.len())
            .field("dropped", &q.dropped)
            .field("closed", &q.closed)
            .finish()
    }
}

impl Events {
    pub(crate) fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        let signal = {
            let (r, w) = std::os::unix::net::UnixStream::pair()?;
            r.set_nonblocking(true)?;
            w.set_nonblocking(true)?;
            (r, w)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                q: Mutex::new(Queue {
                    items: VecDeque::new(),
                    dropped: 0,
                    closed: false,
                    #[cfg(feature = "async")]
                    wakers: Vec::new(),
                }),
                ready: Condvar::new(),
                #[cfg(unix)]
                signal,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.inner.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `e` (dropping the oldest when full). Nothing is queued once closed.
    pub(crate) fn push(&self, e: Event) {
        let mut q = self.lock();
        if q.closed {
            return;
        }
        if q.items.len() >= MAX_QUEUED {
            q.items.pop_front();
            q.dropped += 1;
        }
        if q.items.is_empty() {
            self.raise();
        }
        q.items.push_back(e);
        #[cfg(feature = "async")]
        let wakers = std::mem::take(&mut q.wakers);
        drop(q);
        self.inner.ready.notify_all();
        #[cfg(feature = "async")]
        for w in wakers {
            w.wake();
        }
    }

    /// Close the queue: receivers get what is still queued, then `Disconnected`.
    pub(crate) fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        #[cfg(feature = "async")]
        let wakers = std::mem::take(&mut q.wakers);
        drop(q);
        self.inner.ready.notify_all();
        #[cfg(feature = "async")]
        for w in wakers {
            w.wake();
        }
    }

    fn pop_locked(&self, q: &mut Queue) -> Option<Event> {
        let e = q.items.pop_front()?;
        if q.items.is_empty() {
            self.lower();
        }
        Some(e)
    }

    /// Take the oldest event, waiting for one. `Err` once the client is closed and the queue
    /// is empty.
    pub fn recv(&self) -> Result<Event, RecvError> {
        let mut q = self.lock();
        loop {
            if let Some(e) = self.pop_locked(&mut q) {
                return Ok(e);
            }
            if q.closed {
                return Err(RecvError);
            }
            q = self.inner.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Take the oldest event, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Event, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if let Some(e) = self.pop_locked(&mut q) {
                return Ok(e);
            }
            if q.closed {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            q = self
                .inner
                .ready
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Take the oldest event if one waits.
    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        let mut q = self.lock();
        match self.pop_locked(&mut q) {
            Some(e) => Ok(e),
            None if q.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Wait up to `timeout` until an event waits or the client is closed, without taking
    /// anything; true when an event waits. For code that must decide what to do with an
    /// event before taking it.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            if !q.items.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if q.closed || left.is_zero() {
                return false;
            }
            q = self
                .inner
                .ready
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Events dropped because nobody took them (the queue holds [`MAX_QUEUED`]).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// True once the client was closed: nothing more will be queued.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The events as they come, until the client is closed.
    pub fn iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.recv().ok())
    }

    /// The events waiting now, without blocking.
    pub fn try_iter(&self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }

    #[cfg(unix)]
    fn raise(&self) {
        use std::io::Write;
        let _ = (&self.inner.signal.1).write(&[1]);
    }

    #[cfg(unix)]
    fn lower(&self) {
        use std::io::Read;
        let mut buf = [0u8; 16];
        while matches!((&self.inner.signal.0).read(&mut buf), Ok(n) if n > 0) {}
    }

    #[cfg(not(unix))]
    fn raise(&self) {}

    #[cfg(not(unix))]
    fn lower(&self) {}

    #[cfg(feature = "async")]
    pub(crate) fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        let mut q = self.lock();
        if let Some(e) = self.pop_locked(&mut q) {
            return std::task::Poll::Ready(Some(e));
        }
        if q.closed {
            return std::task::Poll::Ready(None);
        }
        if !q.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            q.wakers.push(cx.waker().clone());
        }
        std::task::Poll::Pending
    }
}

/// The file descriptor is readable exactly while events wait (it holds one byte then). Poll
/// it for readability; never read, write or close it.
#[cfg(unix)]
impl std::os::fd::AsFd for Events {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.inner.signal.0.as_fd()
    }
}

/// See the [`AsFd`](std::os::fd::AsFd) implementation.
#[cfg(unix)]
impl std::os::fd::AsRawFd for Events {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.signal.0.as_raw_fd()
    }
}

/// The events of a client as a [`futures_core::Stream`], for async runtimes
/// ([`Client::event_stream`](crate::Client::event_stream); feature `async`). It ends when
/// the client is closed.
#[cfg(feature = "async")]
#[derive(Debug, Clone)]
pub struct EventStream {
    pub(crate) events: Events,
}

#[cfg(feature = "async")]
impl futures_core::Stream for EventStream {
    type Item = Event;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn readable(q: &Events) -> bool {
        let mut fds = [0u8; 1];
        // Peek with a non-blocking read, putting the byte back.
        use std::io::Read;
        match (&q.inner.signal.0).read(&mut fds) {
            Ok(1) => {
                q.raise();
                true
            }
            _ => false,
        }
    }

    #[test]
    fn queue_order_fd_and_close() {
        let q = Events::new().unwrap();
        #[cfg(unix)]
        assert!(!readable(&q));
        q.push(Event::UdpBlocked);
        q.push(Event::CertificateRenewed);
        #[cfg(unix)]
        assert!(readable(&q));
        assert!(matches!(q.try_recv(), Ok(Event::UdpBlocked)));
        #[cfg(unix)]
        assert!(readable(&q));
        assert!(q.wait(Duration::ZERO));
        assert!(matches!(
            q.recv_timeout(Duration::ZERO),
            Ok(Event::CertificateRenewed)
        ));
        #[cfg(unix)]
        assert!(!readable(&q));
        assert_eq!(q.try_recv().unwrap_err(), TryRecvError::Empty);
        assert_eq!(
            q.recv_timeout(Duration::from_millis(5)).unwrap_err(),
            RecvTimeoutError::Timeout
        );
        q.push(Event::LoginRequired);
        q.close();
        q.push(Event::UdpBlocked);
        assert!(matches!(q.recv(), Ok(Event::LoginRequired)));
        assert_eq!(q.recv().unwrap_err(), RecvError);
        assert_eq!(q.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let q = Events::new().unwrap();
        for i in 0..MAX_QUEUED + 3 {
            q.push(Event::DevicesRevoked { count: i });
        }
        assert_eq!(q.dropped(), 3);
        assert!(matches!(
            q.try_recv(),
            Ok(Event::DevicesRevoked { count: 3 })
        ));
    }

    #[test]
    fn a_receiver_on_another_thread_is_woken() {
        let q = Events::new().unwrap();
        let q2 = q.clone();
        let t = std::thread::spawn(move || q2.recv().map(|e| e.to_string()));
        q.push(Event::NoSuperNode { attached: 0 });
        assert_eq!(t.join().unwrap().unwrap(), "no super node reachable yet");
    }
}
