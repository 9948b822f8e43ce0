//! Chat: one-to-one messages, end-to-end encrypted, and the local history.
//!
//! A page of history read with `natter_client_history` or `natter_client_search_messages`
//! is a snapshot the application owns until `natter_message_list_free`; every string in it
//! is owned by it.

use std::collections::BTreeMap;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use natter::{ChatError, MessageId, MessageStatus};

use crate::boundary::{self, id_text, lock, opt_str_arg, str_arg};
use crate::handle::{self, NatterClient};
use crate::last_error::{self, Detail};
use crate::result::NatterResult;

/// Where a message stands (`NatterMessage::status`, `NatterEvent::code` of message events).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterMessageStatus {
    /// Written here, not yet handed to the network (waiting for the node, or for a device of
    /// the recipient to be online).
    NatterMessageSending = 0,
    /// Handed to the network.
    NatterMessageSent = 1,
    /// A device of the recipient holds it (its end-to-end receipt came back).
    NatterMessageDelivered = 2,
    /// The recipient read it.
    NatterMessageRead = 3,
    /// Could not be sent at all.
    NatterMessageFailed = 4,
    /// Written by someone else (or by this user on another device) and received here.
    NatterMessageReceived = 5,
}

/// The C value of a status.
pub(crate) fn status_to_c(s: MessageStatus) -> NatterMessageStatus {
    match s {
        MessageStatus::Sending => NatterMessageStatus::NatterMessageSending,
        MessageStatus::Sent => NatterMessageStatus::NatterMessageSent,
        MessageStatus::Delivered => NatterMessageStatus::NatterMessageDelivered,
        MessageStatus::Read => NatterMessageStatus::NatterMessageRead,
        MessageStatus::Failed => NatterMessageStatus::NatterMessageFailed,
        _ => NatterMessageStatus::NatterMessageReceived,
    }
}

/// A message id as text: 32 lowercase hexadecimal digits and a NUL.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatterMessageId {
    /// The digits, NUL-terminated (all NULs: no id).
    pub hex: [c_char; 33],
}

impl NatterMessageId {
    fn of(id: Option<MessageId>) -> Self {
        let mut hex = [0 as c_char; 33];
        if let Some(id) = id {
            for (d, s) in hex.iter_mut().zip(id.to_hex().bytes()) {
                *d = s as c_char;
            }
        }
        Self { hex }
    }
}

/// One message of the history (`natter_message_list_get`). Its strings belong to the list
/// and stay valid until `natter_message_list_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterMessage {
    /// Its id (the same on every device).
    pub id: NatterMessageId,
    /// The other user of its one-to-one conversation (NUL-terminated).
    pub with: *const c_char,
    /// Who wrote it (NUL-terminated).
    pub author: *const c_char,
    /// The device that wrote it, 12 hexadecimal digits (NUL-terminated).
    pub device: [c_char; 13],
    /// Its text (NUL-terminated UTF-8; a NUL in it is shown as a space).
    pub text: *const c_char,
    /// The message it answers (all NULs: none).
    pub reply_to: NatterMessageId,
    /// When its author wrote it (Unix time, seconds, the author's clock).
    pub sent_at: u64,
    /// Where it stands: a `NatterMessageStatus`.
    pub status: u32,
    /// True when this user wrote it (here or on another of their devices).
    pub outgoing: bool,
}

/// A page of history, from `natter_client_history` or `natter_client_search_messages`.
///
/// Opaque: read it with `natter_message_list_count` and `natter_message_list_get`, free it
/// with `natter_message_list_free`. The pointer is a handle, never dereferenced: a freed or
/// made-up one gives `NATTER_INVALID_HANDLE`.
pub struct NatterMessageList {
    _private: [u8; 0],
}

struct Page {
    _strings: Vec<CString>,
    messages: Vec<NatterMessage>,
}

// SAFETY: the raw pointers point into the page's own CStrings, whose heap buffers never change
// after the page is built and move with it; it is shared only through the registry's mutex and
// an Arc.
unsafe impl Send for Page {}
// SAFETY: as for Send: the page is immutable once built.
unsafe impl Sync for Page {}

/// Live pages by token (see `handle` for the token scheme).
static PAGES: Mutex<BTreeMap<usize, Arc<Page>>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicUsize = AtomicUsize::new(0x4d00_0000);

fn page(list: Vec<natter::ChatMessage>) -> Page {
    let mut strings = Vec::new();
    let mut messages = Vec::with_capacity(list.len());
    for m in list {
        let mut keep = |s: &str| {
            let owned = CString::new(s.replace('\0', " ")).unwrap_or_default();
            let p = owned.as_ptr();
            strings.push(owned);
            p
        };
        messages.push(NatterMessage {
            id: NatterMessageId::of(Some(m.id)),
            with: keep(m.with.as_str()),
            author: keep(m.author.as_str()),
            device: id_text(&m.device),
            text: keep(&m.text),
            reply_to: NatterMessageId::of(m.reply_to),
            sent_at: m
                .sent_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            status: status_to_c(m.status) as u32,
            outgoing: m.outgoing,
        });
    }
    Page {
        _strings: strings,
        messages,
    }
}

fn page_of(list: *const NatterMessageList) -> Result<Arc<Page>, NatterResult> {
    if list.is_null() {
        return Err(NatterResult::NatterNullArgument);
    }
    lock(&PAGES)
        .get(&list.addr())
        .cloned()
        .ok_or(NatterResult::NatterInvalidHandle)
}

/// The result of a chat failure, recorded for `natter_last_error_*`.
fn chat_result(e: ChatError) -> NatterResult {
    tracing::warn!(error = %e, "chat");
    let r = match &e {
        ChatError::NotLoggedIn => NatterResult::NatterNotLoggedIn,
        ChatError::InvalidName { .. } => NatterResult::NatterInvalidUserName,
        ChatError::Store(_) => NatterResult::NatterIoError,
        ChatError::Closed => NatterResult::NatterInvalidHandle,
        _ => NatterResult::NatterInvalidArgument,
    };
    last_error::record(r, e, Detail::default())
}

/// A message id argument: NULL (none) or 32 hexadecimal digits.
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string.
unsafe fn id_arg(p: *const c_char) -> Result<Option<MessageId>, NatterResult> {
    // SAFETY: the caller's guarantee is passed on.
    match unsafe { opt_str_arg(p) }? {
        None => Ok(None),
        Some(s) => MessageId::from_hex(s)
            .map(Some)
            .ok_or(NatterResult::NatterInvalidArgument),
    }
}

fn hand_out(
    list: Vec<natter::ChatMessage>,
    out_list: *mut *mut NatterMessageList,
) -> Result<(), NatterResult> {
    let token = NEXT.fetch_add(16, Ordering::Relaxed);
    lock(&PAGES).insert(token, Arc::new(page(list)));
    // SAFETY: out_list is non-NULL (checked by the callers) and valid for one write (their
    // caller's promise).
    unsafe { boundary::write_out(out_list, std::ptr::without_provenance_mut(token)) }
}

/// Write `text` to `user`: stored in the history at once (`NATTER_MESSAGE_SENDING`), sealed
/// end to end for every device of theirs and every other device of this user, and sent
/// through their super nodes when the node runs (queued until then, across restarts).
/// `NATTER_EVENT_MESSAGE_STATUS` reports it sent, then delivered. `reply_to`: NULL, or the
/// id (32 hexadecimal digits) of the message it answers. Its id goes to `*out_id` (if not
/// NULL). Does not block on the network.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_INVALID_ARGUMENT`
/// (text over 65536 bytes, `reply_to` not an id), `NATTER_IO_ERROR` (the history file),
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// `user` and `text` must be NULL or NUL-terminated strings, `reply_to` NULL or
/// NUL-terminated; `out_id` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_send_message(
    client: *mut NatterClient,
    user: *const c_char,
    text: *const c_char,
    reply_to: *const c_char,
    out_id: *mut NatterMessageId,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (user, text, reply_to) = unsafe { (str_arg(user)?, str_arg(text)?, id_arg(reply_to)?) };
        let c = handle::get(client)?;
        let m = match reply_to {
            Some(r) => c.client.reply_to_message(user, r, text),
            None => c.client.send_message(user, text),
        }
        .map_err(chat_result)?;
        if !out_id.is_null() {
            // SAFETY: out_id is non-NULL and valid for one write (caller's promise).
            unsafe { boundary::write_out(out_id, NatterMessageId::of(Some(m.id)))? };
        }
        Ok(())
    })
}

/// The history with `user`: up to `limit` messages (at most 500) before the message
/// `before` (NULL: the newest), oldest first, in the order every device shows, into
/// `*out_list` (free it with `natter_message_list_free`). Page back by passing the first
/// message's id as `before`. Does not block on the network.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_INVALID_ARGUMENT`
/// (`before` not an id, or not in the history), `NATTER_IO_ERROR`, `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `user` must be NULL or NUL-terminated, `before` NULL or NUL-terminated; `out_list` NULL
/// or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_history(
    client: *mut NatterClient,
    user: *const c_char,
    before: *const c_char,
    limit: usize,
    out_list: *mut *mut NatterMessageList,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_list)?;
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (user, before) = unsafe { (str_arg(user)?, id_arg(before)?) };
        let list = handle::get(client)?
            .client
            .history(user, before, limit)
            .map_err(chat_result)?;
        hand_out(list, out_list)
    })
}

/// Up to `limit` messages (at most 500) of every conversation whose text contains `text`,
/// newest first, into `*out_list` (free it with `natter_message_list_free`).
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_IO_ERROR`, `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `text` must be NULL or NUL-terminated; `out_list` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_search_messages(
    client: *mut NatterClient,
    text: *const c_char,
    limit: usize,
    out_list: *mut *mut NatterMessageList,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_list)?;
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let text = unsafe { str_arg(text) }?;
        let list = handle::get(client)?
            .client
            .search_messages(text, limit)
            .map_err(chat_result)?;
        hand_out(list, out_list)
    })
}

/// How many messages `list` holds, into `*out_count`.
///
/// Returns `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE` (freed or not a list). Safe to
/// call from any thread.
///
/// # Safety
/// `out_count` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_message_list_count(
    list: *const NatterMessageList,
    out_count: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_count)?;
        let n = page_of(list)?.messages.len();
        // SAFETY: out_count is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_count, n) }
    })
}

/// Copy message `index` (0 to count - 1) of `list` into `*out`. Its strings belong to the
/// list (valid until `natter_message_list_free`); do not free them.
///
/// Returns `NATTER_INVALID_ARGUMENT` (index out of range), `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for one write of a `NatterMessage`.
#[no_mangle]
pub unsafe extern "C" fn natter_message_list_get(
    list: *const NatterMessageList,
    index: usize,
    out: *mut NatterMessage,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out)?;
        let page = page_of(list)?;
        let m = *page
            .messages
            .get(index)
            .ok_or(NatterResult::NatterInvalidArgument)?;
        // SAFETY: out is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out, m) }
    })
}

/// Free a list from `natter_client_history` or `natter_client_search_messages` (its strings
/// with it). NULL does nothing.
///
/// Returns `NATTER_OK`, or `NATTER_INVALID_HANDLE` for a list freed already (or not a
/// list), which is left alone. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_message_list_free(list: *mut NatterMessageList) -> NatterResult {
    boundary::result(|| {
        if list.is_null() {
            return Ok(());
        }
        lock(&PAGES)
            .remove(&list.addr())
            .map(drop)
            .ok_or(NatterResult::NatterInvalidHandle)
    })
}
