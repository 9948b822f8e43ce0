//! The buddy list: contacts, nicknames, groups, blocked users, and its backup in the network.
//!
//! A list read with `natter_client_contacts` is a snapshot the application owns until
//! `natter_contact_list_free`; every string in it is owned by it.

use std::collections::BTreeMap;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use natter::ContactsError;

use crate::account::account_reason;
use crate::boundary::{self, lock, opt_str_arg, str_arg};
use crate::client::os;
use crate::handle::{self, NatterClient};
use crate::last_error::{self, Detail};
use crate::result::NatterResult;

/// One user of the buddy list (`natter_contact_list_get`). Its strings belong to the list
/// and stay valid until `natter_contact_list_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterContact {
    /// The user name (NUL-terminated).
    pub user: *const c_char,
    /// The nickname the user gave them, or `""`.
    pub nickname: *const c_char,
    /// Their own display name as last learnt, or `""`.
    pub display_name: *const c_char,
    /// The labels of the groups they are in (`group_count` of them, in label order).
    pub groups: *const *const c_char,
    /// How many groups.
    pub group_count: usize,
    /// Their contact request to this user, waiting for an answer: its note (`""` when they
    /// left none); NULL when there is none. Accept with `natter_client_add_contact`, or
    /// `natter_client_decline_contact`.
    pub request: *const c_char,
    /// True for a contact (false: only blocked).
    pub contact: bool,
    /// True for a blocked user: their calls never ring.
    pub blocked: bool,
    /// How available they are, as their super nodes last pushed it (a `NatterAvailability`:
    /// `NATTER_AVAILABILITY_ONLINE` or `NATTER_AVAILABILITY_OFFLINE` for now; offline until
    /// known). Changes come as `NATTER_EVENT_CONTACT_PRESENCE`.
    pub availability: u32,
}

/// A snapshot of the buddy list, from `natter_client_contacts`.
///
/// Opaque: read it with `natter_contact_list_count` and `natter_contact_list_get`, free it
/// with `natter_contact_list_free`. The pointer is a handle, never dereferenced: a freed or
/// made-up one gives `NATTER_INVALID_HANDLE`.
pub struct NatterContactList {
    _private: [u8; 0],
}

/// The strings of one list, kept where they are until it is freed.
struct Snapshot {
    _strings: Vec<CString>,
    _groups: Vec<Vec<*const c_char>>,
    contacts: Vec<NatterContact>,
}

// SAFETY: the raw pointers point into the snapshot's own heap buffers (CStrings and group
// vectors), which are never changed after the snapshot is built and move with it; nothing
// is shared with other threads except through the registry's mutex and an Arc.
unsafe impl Send for Snapshot {}
// SAFETY: as for Send: the snapshot is immutable once built.
unsafe impl Sync for Snapshot {}

/// Live lists by token (see `handle` for the token scheme).
static LISTS: Mutex<BTreeMap<usize, Arc<Snapshot>>> = Mutex::new(BTreeMap::new());
static NEXT: AtomicUsize = AtomicUsize::new(0x4c00_0000);

fn c_string(s: &str) -> CString {
    // A NUL cannot come from C, but a Rust caller could store one in a nickname: cut there
    // rather than fail the whole list.
    CString::new(s.split('\0').next().unwrap_or_default()).unwrap_or_default()
}

fn snapshot(list: Vec<natter::Contact>) -> Snapshot {
    let mut strings = Vec::new();
    let mut groups = Vec::with_capacity(list.len());
    let mut contacts = Vec::with_capacity(list.len());
    for c in list {
        let mut keep = |s: &str| {
            let owned = c_string(s);
            let p = owned.as_ptr();
            strings.push(owned);
            p
        };
        let user = keep(c.user.as_str());
        let nickname = keep(&c.nickname);
        let display_name = keep(&c.display_name);
        let labels: Vec<*const c_char> = c.groups.iter().map(|g| keep(g)).collect();
        let request = c.request.as_deref().map_or(std::ptr::null(), &mut keep);
        contacts.push(NatterContact {
            user,
            nickname,
            display_name,
            groups: labels.as_ptr(),
            group_count: labels.len(),
            request,
            contact: c.contact,
            blocked: c.blocked,
            availability: crate::presence::to_c(c.availability) as u32,
        });
        groups.push(labels);
    }
    Snapshot {
        _strings: strings,
        _groups: groups,
        contacts,
    }
}

fn list_of(list: *const NatterContactList) -> Result<Arc<Snapshot>, NatterResult> {
    if list.is_null() {
        return Err(NatterResult::NatterNullArgument);
    }
    lock(&LISTS)
        .get(&list.addr())
        .cloned()
        .ok_or(NatterResult::NatterInvalidHandle)
}

/// The result and specifics of a buddy-list failure.
pub(crate) fn contacts_reason(e: &ContactsError) -> (NatterResult, Detail) {
    let plain = |r| (r, Detail::default());
    match e {
        ContactsError::NotLoggedIn => plain(NatterResult::NatterNotLoggedIn),
        ContactsError::InvalidName { .. } | ContactsError::UnknownUser(_) => {
            plain(NatterResult::NatterInvalidUserName)
        }
        ContactsError::Edit(natter::ListError::Full)
        | ContactsError::Edit(natter::ListError::TooManyGroups) => {
            plain(NatterResult::NatterListFull)
        }
        ContactsError::Edit(_) => plain(NatterResult::NatterInvalidArgument),
        ContactsError::PasswordNeeded => plain(NatterResult::NatterPasswordNeeded),
        ContactsError::KeyUnavailable => plain(NatterResult::NatterKeyUnavailable),
        ContactsError::Backup(_) => plain(NatterResult::NatterBackupRefused),
        ContactsError::Conflict => plain(NatterResult::NatterSyncConflict),
        ContactsError::Server(a) => account_reason(a),
        ContactsError::Io { source, .. } => (NatterResult::NatterIoError, os(source)),
        ContactsError::Closed => plain(NatterResult::NatterInvalidHandle),
        _ => plain(NatterResult::NatterLoginFailed),
    }
}

fn contacts_result(e: ContactsError) -> NatterResult {
    tracing::warn!(error = %e, "buddy list");
    let (r, detail) = contacts_reason(&e);
    last_error::record(r, e, detail)
}

/// Take a snapshot of the buddy list (every contact, blocked user and user asking to be a
/// contact, in name order) into
/// `*out_list`; read it with `natter_contact_list_count` / `natter_contact_list_get` and
/// free it with `natter_contact_list_free`. Empty before a login. Does not block on the
/// network.
///
/// Returns `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out_list` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_contacts(
    client: *mut NatterClient,
    out_list: *mut *mut NatterContactList,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_list)?;
        let snap = snapshot(handle::get(client)?.client.contacts());
        let token = NEXT.fetch_add(16, Ordering::Relaxed);
        lock(&LISTS).insert(token, Arc::new(snap));
        // SAFETY: out_list is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_list, std::ptr::without_provenance_mut(token)) }
    })
}

/// How many users `list` holds, into `*out_count`.
///
/// Returns `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE` (freed or not a list). Safe to
/// call from any thread.
///
/// # Safety
/// `out_count` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_contact_list_count(
    list: *const NatterContactList,
    out_count: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_count)?;
        let n = list_of(list)?.contacts.len();
        // SAFETY: out_count is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_count, n) }
    })
}

/// Copy user `index` (0 to count - 1) of `list` into `*out`. Its strings belong to the list
/// (valid until `natter_contact_list_free`); do not free them.
///
/// Returns `NATTER_INVALID_ARGUMENT` (index out of range), `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for one write of a `NatterContact`.
#[no_mangle]
pub unsafe extern "C" fn natter_contact_list_get(
    list: *const NatterContactList,
    index: usize,
    out: *mut NatterContact,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out)?;
        let snap = list_of(list)?;
        let c = *snap
            .contacts
            .get(index)
            .ok_or(NatterResult::NatterInvalidArgument)?;
        // SAFETY: out is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out, c) }
    })
}

/// Free a list from `natter_client_contacts` (its strings with it). NULL does nothing.
///
/// Returns `NATTER_OK`, or `NATTER_INVALID_HANDLE` for a list freed already (or not a
/// list), which is left alone. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_contact_list_free(list: *mut NatterContactList) -> NatterResult {
    boundary::result(|| {
        if list.is_null() {
            return Ok(());
        }
        lock(&LISTS)
            .remove(&list.addr())
            .map(drop)
            .ok_or(NatterResult::NatterInvalidHandle)
    })
}

/// Run one edit of the list on `client` for the C string `user`; write whether it changed
/// to `changed` (if not NULL).
///
/// # Safety
/// `user` NULL or NUL-terminated; `changed` NULL or valid for one write.
unsafe fn edit(
    client: *mut NatterClient,
    user: *const c_char,
    changed: *mut bool,
    f: impl FnOnce(&natter::Client, &str) -> Result<bool, ContactsError>,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let user = unsafe { str_arg(user) }?;
        let c = handle::get(client)?;
        let did = f(&c.client, user).map_err(contacts_result)?;
        if !changed.is_null() {
            // SAFETY: changed is non-NULL and valid for one write (caller's promise).
            unsafe { boundary::write_out(changed, did)? };
        }
        Ok(())
    })
}

/// Add `user` to the buddy list and ask them to add this user too, with `note` (NULL or
/// `""`: none; at most 1024 bytes): the request waits for them in the network and reaches
/// every device of theirs (`NATTER_EVENT_CONTACT_REQUEST`); their answer comes as
/// `NATTER_EVENT_CONTACT_ACCEPTED`. When `user` asked first, this accepts their request.
/// `*changed` (if not NULL): false when they were a contact already. Kept on disk at once,
/// sent in the background. Does not block on the network.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_INVALID_ARGUMENT`
/// (note too long), `NATTER_LIST_FULL`, `NATTER_IO_ERROR` (the list file could not be
/// written: the edit was not made), `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `user` must be NULL or a NUL-terminated string, `note` NULL or NUL-terminated; `changed`
/// NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_add_contact(
    client: *mut NatterClient,
    user: *const c_char,
    note: *const c_char,
    changed: *mut bool,
) -> NatterResult {
    // SAFETY: the caller guarantees NULL or a NUL-terminated string.
    let note = match unsafe { opt_str_arg(note) } {
        Ok(n) => n.unwrap_or_default().to_string(),
        Err(r) => return r,
    };
    // SAFETY: the caller's guarantees are passed on.
    unsafe { edit(client, user, changed, |c, u| c.add_contact(u, &note)) }
}

/// Decline `user`'s contact request: deleted on every device, and they are not told.
/// `*changed` (if not NULL): false when there was none. Does not block on the network.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_LIST_FULL`,
/// `NATTER_IO_ERROR` (the list file could not be written: the edit was not made),
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// As `natter_client_add_contact`.
#[no_mangle]
pub unsafe extern "C" fn natter_client_decline_contact(
    client: *mut NatterClient,
    user: *const c_char,
    changed: *mut bool,
) -> NatterResult {
    // SAFETY: the caller's guarantees are passed on.
    unsafe { edit(client, user, changed, |c, u| c.decline_contact(u)) }
}

/// Remove `user` from the buddy list, on every device once synced (a request to them not
/// sent yet is not sent). `*changed` (if not NULL): false when they were not a contact.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_LIST_FULL`,
/// `NATTER_IO_ERROR` (the list file could not be written: the edit was not made),
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// As `natter_client_add_contact`.
#[no_mangle]
pub unsafe extern "C" fn natter_client_remove_contact(
    client: *mut NatterClient,
    user: *const c_char,
    changed: *mut bool,
) -> NatterResult {
    // SAFETY: the caller's guarantees are passed on.
    unsafe { edit(client, user, changed, |c, u| c.remove_contact(u)) }
}

/// Block `user` (`blocked` true) or unblock them: a blocked user's calls never ring on any of
/// this user's devices, and their contact requests are dropped unseen. `*changed` (if not
/// NULL): false when nothing changed.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_LIST_FULL`,
/// `NATTER_IO_ERROR` (the list file could not be written: the edit was not made),
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// As `natter_client_add_contact`.
#[no_mangle]
pub unsafe extern "C" fn natter_client_block(
    client: *mut NatterClient,
    user: *const c_char,
    blocked: bool,
    changed: *mut bool,
) -> NatterResult {
    // SAFETY: the caller's guarantees are passed on.
    unsafe { edit(client, user, changed, |c, u| c.block(u, blocked)) }
}

/// Give `user` a nickname (`""`: none; at most 128 bytes). `*changed` (if not NULL): false
/// when nothing changed.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_LIST_FULL`, `NATTER_INVALID_ARGUMENT` (too long),
/// `NATTER_IO_ERROR` (the list file could not be written: the edit was not made),
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// As `natter_client_add_contact`; `nickname` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn natter_client_set_nickname(
    client: *mut NatterClient,
    user: *const c_char,
    nickname: *const c_char,
    changed: *mut bool,
) -> NatterResult {
    // SAFETY: the caller guarantees NULL or a NUL-terminated string.
    let nickname = match unsafe { str_arg(nickname) } {
        Ok(n) => n.to_string(),
        Err(r) => return r,
    };
    // SAFETY: the caller's guarantees are passed on.
    unsafe { edit(client, user, changed, |c, u| c.set_nickname(u, &nickname)) }
}

/// Put `user` in the group `label` (`member` true) or take them out. Labels are 1 to 64
/// bytes; a contact is in at most 32 groups. `*changed` (if not NULL): false when nothing
/// changed.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_INVALID_USER_NAME`, `NATTER_LIST_FULL` (too many groups), `NATTER_INVALID_ARGUMENT`
/// (a label empty or too long),
/// `NATTER_IO_ERROR` (the list file could not be written: the edit was not made),
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// As `natter_client_add_contact`; `label` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn natter_client_set_group(
    client: *mut NatterClient,
    user: *const c_char,
    label: *const c_char,
    member: bool,
    changed: *mut bool,
) -> NatterResult {
    // SAFETY: the caller guarantees NULL or a NUL-terminated string.
    let label = match unsafe { str_arg(label) } {
        Ok(l) => l.to_string(),
        Err(r) => return r,
    };
    // SAFETY: the caller's guarantees are passed on.
    unsafe { edit(client, user, changed, |c, u| c.set_group(u, &label, member)) }
}

/// Merge the buddy list with its backup in the network now, and store it if this device
/// holds edits the backup lacks; `*out_version` (if not NULL): the backup's version after.
/// `password` (NULL: none) is needed only on a device without the list's key
/// (`NATTER_PASSWORD_NEEDED`); the client syncs by itself after logins and edits. Blocks
/// for a few exchanges with the login server (up to 15 s each): not from a UI thread.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_PASSWORD_NEEDED`, `NATTER_KEY_UNAVAILABLE`,
/// `NATTER_BACKUP_REFUSED` (the local list is kept), `NATTER_SYNC_CONFLICT`,
/// `NATTER_LOGIN_UNREACHABLE`, `NATTER_LOGIN_FAILED`, `NATTER_IO_ERROR`,
/// `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `password` must be NULL or a NUL-terminated string; `out_version` NULL or valid for one
/// write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_sync_contacts(
    client: *mut NatterClient,
    password: *const c_char,
    out_version: *mut u64,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let password = unsafe { opt_str_arg(password) }?;
        let done = handle::get(client)?
            .client
            .sync_contacts(password)
            .map_err(contacts_result)?;
        if !out_version.is_null() {
            // SAFETY: out_version is non-NULL and valid for one write (caller's promise).
            unsafe { boundary::write_out(out_version, done.version)? };
        }
        Ok(())
    })
}
