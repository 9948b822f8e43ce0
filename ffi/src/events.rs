//! Events: what a client tells the application, as a polled queue with a file descriptor, or
//! through a callback.
//!
//! Each client has one queue. The client's event thread (network events, calls) pushes onto
//! it; the application takes events either
//!
//! * by polling: `natter_client_next_event` (non-blocking) or `natter_client_wait_event`
//!   (blocking up to a timeout), with `natter_client_event_fd` readable exactly while the
//!   queue is not empty, for `select`/`poll`/`epoll`/kqueue/run-loop integration; or
//! * by callback: `natter_client_set_event_callback`, called on the client's callback thread
//!   for each event in order.
//!
//! The file descriptor is one end of a Unix socket pair holding one byte while events wait:
//! the byte is written when the queue goes from empty to non-empty and read when it becomes
//! empty again, both under the queue's lock, so "readable" and "not empty" never disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::boundary::{self, lock};
use crate::handle::{self, NatterClient};
use crate::result::NatterResult;

/// What an event is about. Values are stable and never reused; new kinds may be added in
/// minor versions: ignore kinds you do not know (and free them).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterEventKind {
    /// Attached to a super node. `detail`: its address and transport; `count`: super nodes
    /// attached now.
    NatterEventAttached = 1,
    /// Lost a super node. `detail`: its address; `count`: super nodes attached now (the node
    /// looks for another by itself).
    NatterEventDetached = 2,
    /// No super node is attached and none could be reached: the node is cut off for now and
    /// keeps trying (0.5 s doubling to 30 s). Sent once, again only after a super node
    /// attached in between; never while one is attached.
    NatterEventNoSuperNode = 3,
    /// The NAT type was (re)detected. `code`: a `NatterNatType`; `detail`: a description.
    NatterEventNatDetected = 4,
    /// This node became a super node or gave the role up. `code`: a `NatterNodeRole`.
    NatterEventRoleChanged = 5,
    /// The device's certificate can no longer be renewed without the password: call
    /// `natter_client_login` with it (the node keeps running until the certificate expires).
    NatterEventLoginRequired = 6,
    /// (ABI 0.3.) A login started with `natter_client_login_begin` ended. `request`: its id;
    /// `result`: what `natter_client_login` would have returned (`NATTER_OK`, or why not, with
    /// `NATTER_CANCELLED` after `natter_client_cancel`); `user`: the user; `detail`: a
    /// description (the reason, with the wait or the minimum version where there is one).
    NatterEventLoginFinished = 7,
    /// (ABI 0.3.) A registration started with `natter_client_register_begin` ended.
    /// `request`, `result`, `user`, `detail` as for `NATTER_EVENT_LOGIN_FINISHED`.
    NatterEventRegisterFinished = 8,
    /// (ABI 0.3.) The certificate was renewed in the background. An application that keeps
    /// the device's credentials itself (`natter_client_export_credentials`) exports them
    /// again.
    NatterEventCertificateRenewed = 9,
    /// A search started with `natter_client_search` ended. `search`: its id; `user`: who;
    /// `code`: a `NatterSearchResult`; `count`: devices of the user online now; `detail`: a
    /// description (devices, hops, time).
    NatterEventSearchResult = 20,
    /// A call rings here. `call`: its id (answer or decline it); `user`: the caller.
    NatterEventCallIncoming = 40,
    /// Our outgoing call rings on one of the callee's devices (once per device). `call`, `user`.
    NatterEventCallRinging = 41,
    /// The call is connected; its audio starts. `call`, `user`.
    NatterEventCallConnected = 42,
    /// The call's hold state changed. `call`; `local_hold`: this side holds it;
    /// `remote_hold`: the peer does. No audio flows while either holds.
    NatterEventCallHoldChanged = 43,
    /// The call's media path changed (the first one included). `call`; `code`: a
    /// `NatterPathKind`; `detail`: the path and why it was chosen.
    NatterEventCallPathChanged = 44,
    /// Fresh call statistics (about once a second while connected): read them with
    /// `natter_call_get_stats`. `call`.
    NatterEventCallStats = 45,
    /// The call ended. `call`; `code`: a `NatterEndReason`; `detail`: a description. The
    /// call's id stays valid for `natter_call_get_stats` (final figures) for a while.
    NatterEventCallEnded = 46,
    /// Someone called while this device was in a call; they were told it is busy. `user`.
    NatterEventCallRejectedBusy = 47,
    /// The call's audio could not use the devices (no sound card, device busy): it sends
    /// silence and discards what it receives. `call`; `detail`: why.
    NatterEventAudioError = 48,
    /// (ABI 0.3.) The system's audio devices changed (one was plugged in or out), for clients
    /// with `NATTER_AUDIO_DEVICES`, while started (looked at every 3 s): list them again with
    /// `natter_audio_devices`. `count`: how many appeared; `detail` names those that appeared
    /// and went away. A call whose device went away goes on with silence: switch it with
    /// `natter_call_set_microphone` / `natter_call_set_speaker`.
    NatterEventAudioDevicesChanged = 49,
    /// (ABI 0.3.) The buddy list is in step with its backup in the network after a sync that
    /// changed something. `code`: 1 when other devices' edits came in (read the list again
    /// with `natter_client_contacts`), 0 when this device stored its own; `detail`: a
    /// description.
    NatterEventContactsSynced = 60,
    /// (ABI 0.3.) A background sync of the buddy list failed; the local list is kept, edits
    /// included. `result`: why (`NATTER_PASSWORD_NEEDED`: call `natter_client_sync_contacts`
    /// with the password); `detail`: a description, with when it is tried again.
    NatterEventContactsSyncFailed = 61,
    /// (ABI 0.3.) Someone asks to be this user's contact (once per request, on every device).
    /// `user`: who; `detail`: their note (may be empty). Answer with
    /// `natter_client_add_contact` or `natter_client_decline_contact`, or leave it: it waits
    /// in the list (`NatterContact::request`).
    NatterEventContactRequest = 62,
    /// (ABI 0.3.) A user this user asked accepted. `user`: who.
    NatterEventContactAccepted = 63,
    /// (ABI 0.3.) A contact request could never be delivered (no such user) and was dropped.
    /// `user`: the user asked; `result`: why; `detail`: a description.
    NatterEventContactRequestFailed = 64,
    /// (ABI 0.3.) A contact's presence changed, pushed by their super nodes (within a second
    /// or two; a device that vanished without a word within a minute), or became known after
    /// login. `user`: the contact; `code`: a `NatterAvailability` (online or offline for
    /// now); `detail`: a description. Also in `NatterContact::availability`.
    NatterEventContactPresence = 65,
    /// (ABI 0.3.) A chat message arrived, once (it is in the history already): from another
    /// user, or written by this user on another device (`outgoing`). `user`: the other user
    /// of the conversation; `message_id`: its id (32 hex digits); `text`: its text;
    /// `device`: the device that wrote it; `code`: a `NatterMessageStatus`; `detail`: a
    /// description.
    NatterEventMessageReceived = 70,
    /// (ABI 0.3.) A message written here moved on (sent, delivered, read, failed). `user`:
    /// the other user of the conversation; `message_id`: its id; `code`: its
    /// `NatterMessageStatus` now; `detail`: a description.
    NatterEventMessageStatus = 71,
}

/// One event. Allocated by the library and owned by whoever received it from
/// `natter_client_next_event` or `natter_client_wait_event` (free it with
/// `natter_event_free`); an event passed to the callback belongs to the library and is valid
/// only during the callback.
///
/// Read the fields directly. Which fields are set depends on `kind` (see
/// `NatterEventKind`); the others are 0, false or NULL. Future versions only add fields at
/// the end: never allocate a `NatterEvent` yourself or copy one by value.
#[repr(C)]
#[derive(Debug)]
pub struct NatterEvent {
    /// What happened.
    pub kind: NatterEventKind,
    /// The call concerned, or 0.
    pub call: u64,
    /// The search concerned (`NATTER_EVENT_SEARCH_RESULT`), or 0.
    pub search: u64,
    /// A user name (NUL-terminated UTF-8), or NULL. Owned by the event.
    pub user: *const c_char,
    /// A human-readable English description (NUL-terminated UTF-8), never NULL (may be
    /// empty). Owned by the event. For people, not for parsing: its wording may change.
    pub detail: *const c_char,
    /// A kind-specific code: `NatterEndReason`, `NatterSearchResult`, `NatterNatType`,
    /// `NatterPathKind` or `NatterNodeRole`; 0 otherwise.
    pub code: u32,
    /// A kind-specific count (super nodes attached, devices online), or 0.
    pub count: u32,
    /// `NATTER_EVENT_CALL_HOLD_CHANGED`: this side holds the call.
    pub local_hold: bool,
    /// `NATTER_EVENT_CALL_HOLD_CHANGED`: the peer holds the call.
    pub remote_hold: bool,
    /// (ABI 0.3.) The peer's device as 12 hexadecimal digits (NUL-terminated), or NULL:
    /// `NATTER_EVENT_CALL_INCOMING` (the calling device), `NATTER_EVENT_CALL_RINGING` and
    /// `NATTER_EVENT_CALL_CONNECTED` (the callee's device). Owned by the event.
    pub device: *const c_char,
    /// (ABI 0.3.) For call events: a `NatterCallDirection`; 0 otherwise.
    pub direction: u32,
    /// (ABI 0.3.) An address, `IP:PORT` (NUL-terminated), or NULL: the super node
    /// (`NATTER_EVENT_ATTACHED`, `NATTER_EVENT_DETACHED`), the mapped address
    /// (`NATTER_EVENT_NAT_DETECTED`), where the call's media goes over UDP
    /// (`NATTER_EVENT_CALL_PATH_CHANGED`: the peer, or the relaying super node). Owned by the
    /// event.
    pub address: *const c_char,
    /// (ABI 0.3.) `NATTER_EVENT_SEARCH_RESULT`: how many devices the search found (online or
    /// not); read each with `natter_event_search_device`. 0 otherwise.
    pub devices: u32,
    /// (ABI 0.3.) The background request concerned (`NATTER_EVENT_LOGIN_FINISHED`,
    /// `NATTER_EVENT_REGISTER_FINISHED`), or 0.
    pub request: u64,
    /// (ABI 0.3.) How a background request ended: `NATTER_OK` or why not. `NATTER_OK` for
    /// other kinds.
    pub result: NatterResult,
    /// (ABI 0.3.) A chat message's id as 32 hexadecimal digits (NUL-terminated), or NULL:
    /// `NATTER_EVENT_MESSAGE_RECEIVED`, `NATTER_EVENT_MESSAGE_STATUS`. Owned by the event.
    pub message_id: *const c_char,
    /// (ABI 0.3.) `NATTER_EVENT_MESSAGE_RECEIVED`: the message's text (NUL-terminated UTF-8;
    /// a NUL in it is shown as a space), or NULL. Owned by the event.
    pub text: *const c_char,
    /// (ABI 0.3.) `NATTER_EVENT_MESSAGE_RECEIVED`: this user wrote it, on another device.
    pub outgoing: bool,
}

/// Which side placed a call (`NatterEvent::direction`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterCallDirection {
    /// Not a call event, or not known.
    NatterCallDirectionNone = 0,
    /// This device called.
    NatterCallDirectionOutgoing = 1,
    /// This device was called.
    NatterCallDirectionIncoming = 2,
}

/// One device a search found (`natter_event_search_device`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatterSearchDevice {
    /// The device's id.
    pub id: [u8; 16],
    /// Its id as people see it: 12 hexadecimal digits, NUL-terminated.
    pub id_text: [c_char; 13],
    /// Online now (false: logged out; `last_seen` says when).
    pub online: bool,
    /// When its presence record was signed (Unix time, seconds).
    pub last_seen: u64,
    /// How many super nodes it is attached to.
    pub super_nodes: u32,
}

/// The function `natter_client_set_event_callback` registers: called with the `user_data`
/// given there and an event that is valid only until the function returns (copy what you
/// keep; do not free it).
pub type NatterEventCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, event: *const NatterEvent)>;

/// An event as the library holds it before handing it out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub kind: NatterEventKind,
    pub call: u64,
    pub search: u64,
    pub user: Option<String>,
    pub detail: String,
    pub code: u32,
    pub count: u32,
    pub local_hold: bool,
    pub remote_hold: bool,
    pub device: Option<String>,
    pub direction: u32,
    pub address: Option<String>,
    pub found: Vec<NatterSearchDevice>,
    pub request: u64,
    pub result: NatterResult,
    /// The typed specifics of `result` (`natter_event_error_detail`).
    pub error: crate::last_error::Detail,
    pub message_id: Option<String>,
    pub text: Option<String>,
    pub outgoing: bool,
}

impl Event {
    /// An event of `kind` with nothing else set.
    pub fn new(kind: NatterEventKind) -> Self {
        Self {
            kind,
            call: 0,
            search: 0,
            user: None,
            detail: String::new(),
            code: 0,
            count: 0,
            local_hold: false,
            remote_hold: false,
            device: None,
            direction: 0,
            address: None,
            found: Vec::new(),
            request: 0,
            result: NatterResult::NatterOk,
            error: crate::last_error::Detail::default(),
            message_id: None,
            text: None,
            outgoing: false,
        }
    }

    /// With the peer's device.
    pub fn device(mut self, device: natter::DeviceId) -> Self {
        self.device = Some(device.to_string());
        self
    }

    /// With an address.
    pub fn address(mut self, address: impl std::fmt::Display) -> Self {
        self.address = Some(address.to_string());
        self
    }

    /// About `call`.
    pub fn call(mut self, call: u64) -> Self {
        self.call = call;
        self
    }

    /// With a user name.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// With a description.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// With a code.
    pub fn code(mut self, code: u32) -> Self {
        self.code = code;
        self
    }

    /// With a count.
    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }
}

/// A C event and the strings it points into. `event` comes first, so a pointer to an
/// `Owned` is a pointer to its `NatterEvent` (both `repr(C)`).
#[repr(C)]
struct Owned {
    event: NatterEvent,
    _user: Option<CString>,
    _detail: CString,
    _device: Option<CString>,
    _address: Option<CString>,
    _message_id: Option<CString>,
    _text: Option<CString>,
    found: Vec<NatterSearchDevice>,
    error: crate::last_error::Detail,
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

impl Owned {
    fn new(e: &Event) -> Box<Owned> {
        let user = e.user.as_deref().map(c_string);
        let detail = c_string(&e.detail);
        let device = e.device.as_deref().map(c_string);
        let address = e.address.as_deref().map(c_string);
        let message_id = e.message_id.as_deref().map(c_string);
        let text = e.text.as_deref().map(c_string);
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        Box::new(Owned {
            event: NatterEvent {
                kind: e.kind,
                call: e.call,
                search: e.search,
                // The CStrings' heap buffers do not move when the Box is built or moved.
                user: ptr(&user),
                detail: detail.as_ptr(),
                code: e.code,
                count: e.count,
                local_hold: e.local_hold,
                remote_hold: e.remote_hold,
                device: ptr(&device),
                direction: e.direction,
                address: ptr(&address),
                devices: u32::try_from(e.found.len()).unwrap_or(u32::MAX),
                request: e.request,
                result: e.result,
                message_id: ptr(&message_id),
                text: ptr(&text),
                outgoing: e.outgoing,
            },
            _user: user,
            _detail: detail,
            _device: device,
            _address: address,
            _message_id: message_id,
            _text: text,
            found: e.found.clone(),
            error: e.error.clone(),
        })
    }
}

/// Events handed to the application and not yet freed, by address: `natter_event_free`
/// frees only these, so freeing twice (or freeing something else) is an error, not a crash.
static LIVE: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

/// Hand `e` to C: the caller owns the result until `natter_event_free`.
fn hand_out(e: &Event) -> *mut NatterEvent {
    let p = Box::into_raw(Owned::new(e));
    lock(&LIVE).insert(p.addr());
    p.cast()
}

/// A registered callback and its user data.
#[derive(Clone, Copy)]
struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const NatterEvent),
    user_data: *mut c_void,
}

// SAFETY: Natter never dereferences `user_data`; it only passes it back to the application's
// callback on the callback thread, which `natter_client_set_event_callback` documents (the
// application promises its user data may be used from that thread).
unsafe impl Send for Callback {}

/// Which side placed each call of one client whose events are being reported (bounded; a call
/// leaves when it ends). Per client: both ends of a call share its id.
pub(crate) type Directions = Mutex<BTreeMap<u64, u32>>;

/// The C form of a client event (with the call's direction, tracked in `directions`); `None`
/// for events the C ABI does not report (yet).
pub(crate) fn from_natter(e: &natter::Event, directions: &Directions) -> Option<Event> {
    use natter::Event as E;
    let placed = match e {
        E::IncomingCall { call, .. } => Some((
            call.id().as_u64(),
            NatterCallDirection::NatterCallDirectionIncoming,
        )),
        E::CallPlaced { call } => Some((
            call.as_u64(),
            NatterCallDirection::NatterCallDirectionOutgoing,
        )),
        _ => None,
    };
    if let Some((call, direction)) = placed {
        remember_direction(directions, call, direction);
    }
    let mut event = event_of(e)?;
    if event.call != 0 {
        let mut d = lock(directions);
        event.direction = d.get(&event.call).copied().unwrap_or(0);
        if event.kind == NatterEventKind::NatterEventCallEnded {
            d.remove(&event.call);
        }
    }
    Some(event)
}

/// Remember which side placed `call` (past 4,096 calls one entry makes room: calls leave when
/// they end, so this only happens with thousands of calls whose end was never taken).
fn remember_direction(directions: &Directions, call: u64, direction: NatterCallDirection) {
    let mut d = lock(directions);
    if d.len() >= 4096 && !d.contains_key(&call) {
        d.pop_first();
    }
    d.insert(call, direction as u32);
}

/// One device of a search result in C form.
fn search_device(d: &natter::DeviceRecord) -> NatterSearchDevice {
    NatterSearchDevice {
        id: d.device.0,
        id_text: boundary::id_text(&d.device),
        online: d.online,
        last_seen: d
            .last_seen
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs()),
        super_nodes: u32::try_from(d.super_nodes.len()).unwrap_or(u32::MAX),
    }
}

/// [`from_natter`] without the direction.
fn event_of(e: &natter::Event) -> Option<Event> {
    use crate::call::NatterEndReason as R;
    use crate::client::{nat_type, NatterNodeRole, NatterSearchResult};
    use natter::Event as E;
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    Some(match e {
        E::Attached {
            super_node,
            transport,
            attached,
            ..
        } => Event::new(NatterEventKind::NatterEventAttached)
            .detail(format!(
                "{super_node} via {}",
                match transport {
                    natter::LinkTransport::Tcp => "TCP",
                    natter::LinkTransport::TcpFallback => "TCP (fallback port)",
                    _ => "TLS",
                }
            ))
            .address(super_node)
            .count(count(*attached)),
        E::Detached {
            super_node,
            attached,
        } => Event::new(NatterEventKind::NatterEventDetached)
            .detail(super_node.to_string())
            .address(super_node)
            .count(count(*attached)),
        E::NoSuperNode { .. } => Event::new(NatterEventKind::NatterEventNoSuperNode),
        E::NatDetected { nat, mapped, .. } => {
            let mut e = Event::new(NatterEventKind::NatterEventNatDetected)
                .code(nat_type(Some(*nat)) as u32)
                .detail(nat.describe());
            if let Some(m) = mapped {
                e = e.address(m);
            }
            e
        }
        E::RoleChanged { role } => {
            let (code, detail) = match role {
                natter::NodeRole::SuperNode => (
                    NatterNodeRole::NatterNodeSuperNode,
                    "promoted to super node",
                ),
                _ => (
                    NatterNodeRole::NatterNodeClient,
                    "gave the super-node role up",
                ),
            };
            Event::new(NatterEventKind::NatterEventRoleChanged)
                .code(code as u32)
                .detail(detail)
        }
        E::LoginRequired => Event::new(NatterEventKind::NatterEventLoginRequired)
            .detail("the certificate can no longer be renewed without the password"),
        E::CertificateRenewed => Event::new(NatterEventKind::NatterEventCertificateRenewed)
            .detail("the certificate was renewed"),
        E::ContactsSynced { merged, .. } => Event::new(NatterEventKind::NatterEventContactsSynced)
            .code(u32::from(*merged))
            .detail(e.to_string()),
        E::ContactRequest { from, note } => Event::new(NatterEventKind::NatterEventContactRequest)
            .user(from.as_str())
            .detail(note.clone()),
        E::ContactAccepted { user } => Event::new(NatterEventKind::NatterEventContactAccepted)
            .user(user.as_str())
            .detail(e.to_string()),
        E::ContactPresence { user, availability } => {
            Event::new(NatterEventKind::NatterEventContactPresence)
                .user(user.as_str())
                .code(crate::presence::to_c(*availability) as u32)
                .detail(e.to_string())
        }
        E::MessageReceived { message } => {
            let mut ev = Event::new(NatterEventKind::NatterEventMessageReceived)
                .user(message.with.as_str())
                .code(crate::chat::status_to_c(message.status) as u32)
                .device(message.device)
                .detail(e.to_string());
            ev.message_id = Some(message.id.to_hex());
            ev.text = Some(message.text.clone());
            ev.outgoing = message.outgoing;
            ev
        }
        E::MessageStatus { id, with, status } => {
            let mut ev = Event::new(NatterEventKind::NatterEventMessageStatus)
                .user(with.as_str())
                .code(crate::chat::status_to_c(*status) as u32)
                .detail(e.to_string());
            ev.message_id = Some(id.to_hex());
            ev
        }
        E::ContactRequestFailed { user, error } => {
            let mut ev = Event::new(NatterEventKind::NatterEventContactRequestFailed)
                .user(user.as_str())
                .detail(e.to_string());
            (ev.result, ev.error) = crate::contacts::contacts_reason(error);
            ev
        }
        E::ContactsSyncFailed { error, .. } => {
            let mut ev =
                Event::new(NatterEventKind::NatterEventContactsSyncFailed).detail(e.to_string());
            (ev.result, ev.error) = crate::contacts::contacts_reason(error);
            ev
        }
        E::LoginFinished {
            request,
            user,
            result,
        } => {
            let mut e = Event::new(NatterEventKind::NatterEventLoginFinished).user(user.clone());
            match result {
                Ok(info) => {
                    e = e
                        .user(info.user.as_str())
                        .device(info.device)
                        .detail(format!(
                            "logged in as {} on device {}",
                            info.user, info.device
                        ));
                }
                Err(err) => {
                    (e.result, e.error) = crate::client::login_reason(err);
                    e = e.detail(err.to_string());
                }
            }
            e.request = request.as_u64();
            e
        }
        E::RegisterFinished {
            request,
            user,
            result,
        } => {
            let mut e = Event::new(NatterEventKind::NatterEventRegisterFinished).user(user.clone());
            match result {
                Ok(()) => e = e.detail(format!("registered {user}")),
                Err(err) => {
                    (e.result, e.error) = crate::client::register_reason(err);
                    e = e.detail(err.to_string());
                }
            }
            e.request = request.as_u64();
            e
        }
        E::SearchResult {
            search,
            user,
            outcome,
        } => {
            let took = format!("{:.1} ms", outcome.took.as_secs_f64() * 1000.0);
            let online = outcome.online();
            let (code, detail) = match &outcome.found {
                natter::Found::Devices(devices) => (
                    NatterSearchResult::NatterSearchFound,
                    format!(
                        "found {user}: {} device(s), {online} online ({} hops, {took})",
                        devices.len(),
                        outcome.hops
                    ),
                ),
                natter::Found::NotFound => (
                    NatterSearchResult::NatterSearchNotFound,
                    format!("{user} not found ({took})"),
                ),
                _ => (
                    NatterSearchResult::NatterSearchUnavailable,
                    format!("{user}: the index could not answer, try again ({took})"),
                ),
            };
            let mut e = Event::new(NatterEventKind::NatterEventSearchResult)
                .user(user.as_str())
                .code(code as u32)
                .count(count(online))
                .detail(detail);
            e.search = search.as_u64();
            if let natter::Found::Devices(devices) = &outcome.found {
                e.found = devices.iter().map(search_device).collect();
            }
            e
        }
        E::IncomingCall { call, from, device } => {
            Event::new(NatterEventKind::NatterEventCallIncoming)
                .call(call.id().as_u64())
                .user(from.as_str())
                .device(*device)
                .detail(format!("{from} is calling"))
        }
        E::Ringing { call, device } => Event::new(NatterEventKind::NatterEventCallRinging)
            .call(call.as_u64())
            .device(*device)
            .detail(format!("ringing on device {device}")),
        E::CallConnected { call, device, .. } => {
            Event::new(NatterEventKind::NatterEventCallConnected)
                .call(call.as_u64())
                .device(*device)
                .detail(format!("connected to device {device}"))
        }
        E::CallHoldChanged {
            call,
            local,
            remote,
        } => {
            let mut e = Event::new(NatterEventKind::NatterEventCallHoldChanged)
                .call(call.as_u64())
                .detail(format!("hold: local {local}, remote {remote}"));
            e.local_hold = *local;
            e.remote_hold = *remote;
            e
        }
        E::CallPath { call, path } => {
            let mut e = Event::new(NatterEventKind::NatterEventCallPathChanged)
                .call(call.as_u64())
                .code(crate::call::path_kind(Some(path.kind)) as u32)
                .detail(path.to_string());
            if let Some(a) = path.remote {
                e = e.address(a);
            }
            e
        }
        E::CallStats { call, .. } => {
            Event::new(NatterEventKind::NatterEventCallStats).call(call.as_u64())
        }
        E::CallEnded { call, reason } => Event::new(NatterEventKind::NatterEventCallEnded)
            .call(call.as_u64())
            .code(R::from(*reason) as u32)
            .detail(reason.to_string()),
        E::MissedBusy { from, .. } => Event::new(NatterEventKind::NatterEventCallRejectedBusy)
            .user(from.as_str())
            .detail(format!("{from} called while this device was busy")),
        E::AudioDevicesChanged { added, .. } => {
            Event::new(NatterEventKind::NatterEventAudioDevicesChanged)
                .count(count(added.len()))
                .detail(e.to_string())
        }
        E::AudioError { call, error } => Event::new(NatterEventKind::NatterEventAudioError)
            .call(call.as_u64())
            .detail(error.to_string()),
        _ => return None,
    })
}

/// The next event the C ABI reports, waiting up to `wait` (`None`: not at all).
pub(crate) fn next(events: &Events, wait: Option<Duration>) -> Option<Event> {
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let e = match deadline {
            None => events.queue.try_recv().ok()?,
            Some(d) => events
                .queue
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok()?,
        };
        if let Some(e) = from_natter(&e, &events.directions) {
            return Some(e);
        }
    }
}

struct CallbackState {
    closed: bool,
    callback: Option<Callback>,
    dispatcher: Option<JoinHandle<()>>,
    dispatcher_id: Option<ThreadId>,
}

/// A client's events for C: the client's queue (its file descriptor, polled by
/// `natter_client_next_event`), and the callback thread that takes them instead while a
/// callback is set.
pub(crate) struct Events {
    /// The client's queue.
    pub queue: natter::Events,
    state: Mutex<CallbackState>,
    /// Signalled when the callback or `closed` changes.
    changed: Condvar,
    /// Held while a callback runs: `natter_client_set_event_callback` waits on it so that the
    /// old callback is not running once it returns.
    invoking: Mutex<()>,
    /// The direction of this client's calls.
    directions: Directions,
}

impl Events {
    /// This client placed `call` (its events say so even before it is placed).
    pub fn set_direction(&self, call: u64, direction: NatterCallDirection) {
        remember_direction(&self.directions, call, direction);
    }

    /// The C side of `queue`.
    pub fn new(queue: natter::Events) -> Arc<Self> {
        Arc::new(Self {
            queue,
            state: Mutex::new(CallbackState {
                closed: false,
                callback: None,
                dispatcher: None,
                dispatcher_id: None,
            }),
            changed: Condvar::new(),
            invoking: Mutex::new(()),
            directions: Directions::default(),
        })
    }

    fn on_dispatcher(st: &CallbackState) -> bool {
        st.dispatcher_id == Some(std::thread::current().id())
    }

    /// Deliver events to `callback` from now on (or stop, with `None`). When this returns
    /// (from any thread but the callback thread itself), the previous callback is not
    /// running and will not be called again.
    pub fn set_callback(
        self: &Arc<Self>,
        callback: NatterEventCallback,
        user_data: *mut c_void,
    ) -> std::io::Result<()> {
        let mut st = lock(&self.state);
        if st.closed {
            return Ok(());
        }
        st.callback = callback.map(|f| Callback { f, user_data });
        if st.callback.is_some() && st.dispatcher.is_none() {
            let me = self.clone();
            let t = std::thread::Builder::new()
                .name("natter-callback".into())
                .spawn(move || me.dispatch())?;
            st.dispatcher_id = Some(t.thread().id());
            st.dispatcher = Some(t);
        }
        let inside = Self::on_dispatcher(&st);
        drop(st);
        self.changed.notify_all();
        if !inside {
            drop(lock(&self.invoking));
        }
        Ok(())
    }

    /// The callback thread: delivers events while a callback is set. It waits for an event
    /// without taking it, so events that arrive while no callback is set stay queued for
    /// polling.
    fn dispatch(self: Arc<Self>) {
        loop {
            let st = lock(&self.state);
            if st.closed {
                return;
            }
            let Some(callback) = st.callback else {
                drop(self.changed.wait(st).unwrap_or_else(|e| e.into_inner()));
                continue;
            };
            match self.queue.try_recv() {
                Ok(e) => {
                    let Some(event) = from_natter(&e, &self.directions) else {
                        continue;
                    };
                    // Taken before the state is released: see `set_callback`.
                    let running = lock(&self.invoking);
                    drop(st);
                    let owned = Owned::new(&event);
                    IN_CALLBACK.with(|c| c.set(std::ptr::addr_of!(*owned).addr()));
                    // SAFETY: `f` is the function the application registered for this
                    // client, with the promise that it may be called on this thread with
                    // `user_data`; the event pointer is valid (owned here) for the duration of
                    // the call, as documented.
                    unsafe { (callback.f)(callback.user_data, &owned.event) };
                    IN_CALLBACK.with(|c| c.set(0));
                    drop(owned);
                    drop(running);
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    drop(st);
                    // Woken by an event or by the client closing; a callback change while
                    // waiting is seen when the next event arrives.
                    self.queue.wait(Duration::from_secs(3600));
                }
            }
        }
    }

    /// Stop the callbacks (first step of closing): no callback starts from now on.
    pub fn close_begin(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// Last step of closing, once the client is closed (which closes the queue and wakes the
    /// callback thread): the callback thread ends (joined, unless this is the callback thread
    /// itself, which then ends when its callback returns).
    pub fn close_end(&self) {
        let mut st = lock(&self.state);
        let inside = Self::on_dispatcher(&st);
        let t = st.dispatcher.take();
        drop(st);
        if let Some(t) = t {
            if !inside {
                let _ = t.join();
            }
        }
    }
}

/// The file descriptor that is readable while events wait in `client`'s queue, written to
/// `*out_fd`. Use it with `select`, `poll`, `epoll`, kqueue or a run loop, then take events
/// with `natter_client_next_event` until it returns `NATTER_NO_EVENT`.
///
/// The descriptor belongs to the client: do not read, write or close it; it is closed by
/// `natter_client_free`. It stays the same for the client's life. Unix only: elsewhere
/// returns `NATTER_UNSUPPORTED` (use the callback or `natter_client_wait_event`).
///
/// Returns `NATTER_NULL_ARGUMENT` when `client` or `out_fd` is NULL, `NATTER_INVALID_HANDLE`
/// when `client` is not live. Safe to call from any thread.
///
/// # Safety
/// `out_fd` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_event_fd(
    client: *const NatterClient,
    out_fd: *mut c_int,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_fd)?;
        let c = handle::get(client)?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd as _;
            // SAFETY: out_fd is non-NULL (checked) and valid for one write (caller's promise).
            unsafe { boundary::write_out(out_fd, c.events.queue.as_raw_fd()) }
        }
        #[cfg(not(unix))]
        {
            let _ = c;
            Err(NatterResult::NatterUnsupported)
        }
    })
}

/// Take the oldest waiting event of `client` without blocking.
///
/// On `NATTER_OK`, `*out_event` is an event the caller owns: free it with
/// `natter_event_free`. When none waits, returns `NATTER_NO_EVENT` and sets `*out_event` to
/// NULL. With a callback registered, events go to the callback instead and this usually finds
/// none.
///
/// Returns `NATTER_NULL_ARGUMENT` when `client` or `out_event` is NULL,
/// `NATTER_INVALID_HANDLE` when `client` is not live. Safe to call from any thread (each
/// event is taken by exactly one caller).
///
/// # Safety
/// `out_event` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_next_event(
    client: *mut NatterClient,
    out_event: *mut *mut NatterEvent,
) -> NatterResult {
    // SAFETY: the caller's guarantee for out_event is passed on.
    unsafe { take_event(client, out_event, None) }
}

/// Take the oldest waiting event of `client`, waiting up to `timeout_ms` milliseconds for one
/// (0: do not wait). For programs without their own event loop, and platforms without file
/// descriptors.
///
/// On `NATTER_OK`, `*out_event` is an event the caller owns: free it with
/// `natter_event_free`. When none arrived in time (or the client was freed meanwhile),
/// returns `NATTER_NO_EVENT` and sets `*out_event` to NULL.
///
/// Returns `NATTER_NULL_ARGUMENT` when `client` or `out_event` is NULL,
/// `NATTER_INVALID_HANDLE` when `client` is not live. Safe to call from any thread. Do not
/// call it from the event callback (it would wait for itself).
///
/// # Safety
/// `out_event` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_wait_event(
    client: *mut NatterClient,
    timeout_ms: u32,
    out_event: *mut *mut NatterEvent,
) -> NatterResult {
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    // SAFETY: the caller's guarantee for out_event is passed on.
    unsafe { take_event(client, out_event, Some(timeout)) }
}

/// # Safety
/// `out_event` must be NULL or valid for one write.
unsafe fn take_event(
    client: *const NatterClient,
    out_event: *mut *mut NatterEvent,
    wait: Option<Duration>,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_event)?;
        let c = handle::get(client)?;
        let e = next(&c.events, wait);
        let (p, r) = match e {
            Some(e) => (hand_out(&e), Ok(())),
            None => (std::ptr::null_mut(), Err(NatterResult::NatterNoEvent)),
        };
        // SAFETY: out_event is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_event, p)? };
        r
    })
}

/// The typed specifics of a failed background request's `result`
/// (`NATTER_EVENT_LOGIN_FINISHED`, `NATTER_EVENT_REGISTER_FINISHED`), as
/// `natter_last_error_detail` gives them for a failed call: the wait of `NATTER_THROTTLED`,
/// the version `NATTER_UPGRADE_REQUIRED` needs, the `errno` behind `NATTER_LOGIN_UNREACHABLE`
/// or `NATTER_IO_ERROR`. For other events `result` is `NATTER_OK` and the rest is empty. Set
/// `out->version` to `NATTER_ERROR_DETAIL_VERSION` first. `event` is as for
/// `natter_event_search_device`.
///
/// Returns `NATTER_NULL_ARGUMENT` (`event` or `out` NULL), `NATTER_INVALID_HANDLE` (not such
/// an event), `NATTER_UNSUPPORTED_VERSION` (nothing written). Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or point to a writable `NatterErrorDetail` whose `version` field is
/// set.
#[no_mangle]
pub unsafe extern "C" fn natter_event_error_detail(
    event: *const NatterEvent,
    out: *mut crate::last_error::NatterErrorDetail,
) -> NatterResult {
    boundary::result(|| {
        if event.is_null() {
            return Err(NatterResult::NatterNullArgument);
        }
        boundary::check_out(out)?;
        // SAFETY: out is non-NULL and points to a NatterErrorDetail whose first field, the
        // version, the caller has set.
        let version = unsafe { std::ptr::addr_of!((*out).version).read_unaligned() };
        if version != crate::last_error::NATTER_ERROR_DETAIL_VERSION {
            return Err(NatterResult::NatterUnsupportedVersion);
        }
        let detail = with_live_event(event, |owned| {
            Ok(crate::last_error::c_detail(
                owned.event.result,
                &owned.error,
            ))
        })?;
        // SAFETY: out is non-NULL and holds a version-1 NatterErrorDetail (checked above, the
        // caller's promise), which is this struct.
        unsafe { boundary::write_out(out, detail) }
    })
}

/// Run `f` on the event behind `event` if it is one the application may read now: polled and
/// not freed (in LIVE, whose lock is held meanwhile, so no other thread frees it), or the one
/// this thread's callback runs with. `NATTER_INVALID_HANDLE` otherwise.
fn with_live_event<T>(
    event: *const NatterEvent,
    f: impl FnOnce(&Owned) -> Result<T, NatterResult>,
) -> Result<T, NatterResult> {
    let addr = event.addr();
    let live = lock(&LIVE);
    if !live.contains(&addr) && IN_CALLBACK.with(|c| c.get()) != addr {
        return Err(NatterResult::NatterInvalidHandle);
    }
    // SAFETY: the address is a live event from hand_out (in LIVE, under its lock, held until
    // f returns) or the one this thread's callback runs with (alive until the callback
    // returns); either way it points to the NatterEvent at the start of a repr(C) Owned.
    let owned = unsafe { &*event.cast::<Owned>() };
    let r = f(owned);
    drop(live);
    r
}

thread_local! {
    /// The event this thread is handing to the application's callback (its address), or 0.
    static IN_CALLBACK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Copy device `index` (0 to `event->devices - 1`) of a `NATTER_EVENT_SEARCH_RESULT` into
/// `*out`. `event` is an event from `natter_client_next_event` or `natter_client_wait_event`
/// not freed yet, or the one the event callback is running with (from within the callback).
///
/// Returns `NATTER_NULL_ARGUMENT` (`event` or `out` NULL), `NATTER_INVALID_HANDLE` (not such
/// an event), `NATTER_INVALID_ARGUMENT` (`index` out of range, or not a search result). Safe
/// to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for one write of a `NatterSearchDevice`.
#[no_mangle]
pub unsafe extern "C" fn natter_event_search_device(
    event: *const NatterEvent,
    index: u32,
    out: *mut NatterSearchDevice,
) -> NatterResult {
    boundary::result(|| {
        if event.is_null() {
            return Err(NatterResult::NatterNullArgument);
        }
        boundary::check_out(out)?;
        let device = with_live_event(event, |owned| {
            owned
                .found
                .get(index as usize)
                .copied()
                .ok_or(NatterResult::NatterInvalidArgument)
        })?;
        // SAFETY: out is non-NULL (checked) and valid for one write (the caller's promise).
        unsafe { boundary::write_out(out, device) }
    })
}

/// Free an event returned by `natter_client_next_event` or `natter_client_wait_event`.
///
/// `natter_event_free(NULL)` does nothing and returns `NATTER_OK`. A pointer that is not a
/// live event from those functions (freed already, an event given to the callback, anything
/// else) returns `NATTER_INVALID_HANDLE` and frees nothing: double frees are caught, as long
/// as the library has not meanwhile handed out a new event at the same address. Safe to call
/// from any thread.
#[no_mangle]
pub extern "C" fn natter_event_free(event: *mut NatterEvent) -> NatterResult {
    boundary::result(|| {
        if event.is_null() {
            return Ok(());
        }
        if !lock(&LIVE).remove(&event.addr()) {
            return Err(NatterResult::NatterInvalidHandle);
        }
        // SAFETY: the address was in LIVE, so it came from Box::into_raw(Box<Owned>) in
        // hand_out and has not been freed (it is removed from LIVE exactly once, here);
        // NatterEvent is the first field of the repr(C) Owned, so the cast restores the
        // original pointer.
        drop(unsafe { Box::from_raw(event.cast::<Owned>()) });
        Ok(())
    })
}

/// Deliver `client`'s events to `callback` (with `user_data`) instead of the queue; NULL
/// stops the callbacks (events queue up again for polling).
///
/// **Thread**: the callback runs on the client's callback thread (named `natter-callback`),
/// one event at a time, in order, never concurrently with itself. It may call any Natter
/// function, `natter_client_free` of its own client included (the client is then torn down
/// when the callback returns). Keep it short: later events wait for it. It must not let a C++
/// exception or a `longjmp` cross it. `user_data` is passed back untouched; it must stay
/// usable from that thread until the callback is replaced or the client freed.
///
/// When this returns (called from another thread than the callback's), the previous callback
/// is not running and will not be called again, so its `user_data` may be released. Events
/// already waiting in the queue go to the new callback.
///
/// Returns `NATTER_INVALID_HANDLE` when `client` is not live, `NATTER_NULL_ARGUMENT` when it
/// is NULL, `NATTER_IO_ERROR` when the callback thread cannot be started. Safe to call from
/// any thread.
#[no_mangle]
pub extern "C" fn natter_client_set_event_callback(
    client: *mut NatterClient,
    callback: NatterEventCallback,
    user_data: *mut c_void,
) -> NatterResult {
    boundary::result(|| {
        let c = handle::get(client)?;
        c.events
            .set_callback(callback, user_data)
            .map_err(|_| NatterResult::NatterIoError)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_freed_once() {
        let e = Event::new(NatterEventKind::NatterEventCallIncoming)
            .user("alice")
            .detail("rings");
        let p = hand_out(&e);
        // SAFETY: p is a live event from hand_out.
        let user = unsafe { std::ffi::CStr::from_ptr((*p).user) };
        assert_eq!(user.to_str().unwrap(), "alice");
        assert_eq!(natter_event_free(p), NatterResult::NatterOk);
        assert_eq!(natter_event_free(p), NatterResult::NatterInvalidHandle);
        assert_eq!(
            natter_event_free(std::ptr::dangling_mut()),
            NatterResult::NatterInvalidHandle
        );
        assert_eq!(
            natter_event_free(std::ptr::null_mut()),
            NatterResult::NatterOk
        );
    }

    #[test]
    fn client_events_become_c_events() {
        let e = from_natter(
            &natter::Event::NoSuperNode { attached: 0 },
            &Directions::default(),
        )
        .unwrap();
        assert_eq!(e.kind, NatterEventKind::NatterEventNoSuperNode);
        let e = from_natter(
            &natter::Event::CallEnded {
                call: natter::CallId::from_u64(7),
                reason: natter::EndReason::UserOffline,
            },
            &Directions::default(),
        )
        .unwrap();
        assert_eq!(e.kind, NatterEventKind::NatterEventCallEnded);
        assert_eq!(e.call, 7);
        assert_eq!(
            e.code,
            crate::call::NatterEndReason::NatterEndUserOffline as u32
        );
        assert_eq!(e.detail, "the user is offline");
        assert!(from_natter(&natter::Event::UdpBlocked, &Directions::default()).is_none());
    }
}
