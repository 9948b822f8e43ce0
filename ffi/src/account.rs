//! The user's account from a logged-in client: its devices, revoking one, changing the
//! password.

use std::ffi::c_char;
use std::time::SystemTime;

use natter::{AccountError, DeviceId};

use crate::boundary::{self, str_arg};
use crate::client::{os, server_detail, server_result, wait};
use crate::handle::{self, NatterClient};
use crate::last_error::{self, Detail};
use crate::result::NatterResult;

/// One device of the user's account (`natter_client_devices`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterAccountDevice {
    /// The device's id (pass it to `natter_client_revoke_device`).
    pub id: [u8; 16],
    /// Its id as people see it: the first 12 hexadecimal digits, NUL-terminated.
    pub id_text: [c_char; 13],
    /// When it was first certified (Unix time, seconds).
    pub first_seen: u64,
    /// When it last logged in or renewed its certificate (Unix time, seconds).
    pub last_seen: u64,
    /// When it was revoked (Unix time, seconds), or 0 while it is in use.
    pub revoked_at: u64,
    /// True for the device asking.
    pub this_device: bool,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn account_result(e: AccountError) -> NatterResult {
    tracing::warn!(error = %e, "account operation");
    let (r, detail) = account_reason(&e);
    last_error::record(r, e, detail)
}

/// The result and the typed specifics of an account operation's failure.
pub(crate) fn account_reason(e: &AccountError) -> (NatterResult, Detail) {
    match e {
        AccountError::NotLoggedIn => (NatterResult::NatterNotLoggedIn, Detail::default()),
        AccountError::WrongPassword => (NatterResult::NatterWrongPassword, Detail::default()),
        AccountError::WeakPassword => (NatterResult::NatterWeakPassword, Detail::default()),
        AccountError::Throttled { retry_after } => {
            (NatterResult::NatterThrottled, wait(retry_after))
        }
        AccountError::UnknownDevice => (NatterResult::NatterUnknownDevice, Detail::default()),
        AccountError::ThisDevice => (NatterResult::NatterThisDevice, Detail::default()),
        AccountError::Revoked => (NatterResult::NatterRevoked, Detail::default()),
        AccountError::CertificateRefused => (NatterResult::NatterPasswordNeeded, Detail::default()),
        AccountError::Server(s) => (server_result(s), server_detail(s)),
        AccountError::Io { source, .. } => (NatterResult::NatterIoError, os(source)),
        AccountError::Closed => (NatterResult::NatterInvalidHandle, Detail::default()),
        _ => (NatterResult::NatterLoginFailed, Detail::default()),
    }
}

/// List the devices of the logged-in user's account into `out` (room for `capacity`):
/// those in use first (oldest first), then the most recently revoked, at most 64 in all.
/// `*count` is set to how many there are, even when `capacity` is too small (then the first
/// `capacity` are written and `NATTER_BUFFER_TOO_SMALL` returned). This device proves its
/// certificate: no password is needed. Blocks for one exchange with the login server (up to
/// 15 s): do not call it from a UI thread.
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_BUFFER_TOO_SMALL`, `NATTER_REVOKED` (this device
/// was revoked), `NATTER_PASSWORD_NEEDED` (its certificate is no longer accepted: log in
/// again), `NATTER_LOGIN_UNREACHABLE`, `NATTER_LOGIN_FAILED`; `NATTER_NULL_ARGUMENT` (`count`
/// NULL, or `out` NULL with `capacity` > 0), `NATTER_INVALID_ARGUMENT` (`out` misaligned),
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for `capacity` writes of `NatterAccountDevice`; `count`
/// valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_devices(
    client: *mut NatterClient,
    out: *mut NatterAccountDevice,
    capacity: usize,
    count: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(count)?;
        boundary::check_out_slice(out, capacity)?;
        let devices = handle::get(client)?
            .client
            .devices()
            .map_err(account_result)?;
        let list: Vec<NatterAccountDevice> = devices
            .iter()
            .map(|d| NatterAccountDevice {
                id: d.device.0,
                id_text: boundary::id_text(&d.device),
                first_seen: unix(d.first_seen),
                last_seen: unix(d.last_seen),
                revoked_at: d.revoked.map_or(0, unix),
                this_device: d.this_device,
            })
            .collect();
        // SAFETY: count is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(count, list.len())? };
        let n = list.len().min(capacity);
        // SAFETY: out is checked for capacity >= n elements and valid for them (caller's
        // promise).
        unsafe { boundary::copy_out_slice(&list[..n], out)? };
        if n < list.len() {
            return Err(NatterResult::NatterBufferTooSmall);
        }
        Ok(())
    })
}

/// Revoke another device of the logged-in user's account (`id`: 16 bytes from
/// `natter_client_devices`); its certificate stops working. Needs the account's password.
/// Blocks for one exchange with the login server (up to 15 s).
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_THIS_DEVICE` (a device cannot revoke itself),
/// `NATTER_WRONG_PASSWORD`, `NATTER_UNKNOWN_DEVICE`, `NATTER_THROTTLED`,
/// `NATTER_LOGIN_UNREACHABLE`, `NATTER_LOGIN_FAILED`; `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `id` must be NULL or point to 16 readable bytes; `password` NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn natter_client_revoke_device(
    client: *mut NatterClient,
    id: *const u8,
    password: *const c_char,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or 16 readable bytes.
        let id = unsafe { boundary::slice_arg(id, 16)? };
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let password = unsafe { str_arg(password)? };
        let mut device = [0u8; 16];
        device.copy_from_slice(id);
        handle::get(client)?
            .client
            .revoke_device(DeviceId(device), password)
            .map_err(account_result)
    })
}

/// Change the logged-in user's password from `old_password` to `new_password`; with
/// `revoke_others`, also revoke every other device of the account (this one stays
/// certified): what to do when the password may have leaked. Blocks for one exchange with
/// the login server (up to 15 s).
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_WRONG_PASSWORD`, `NATTER_WEAK_PASSWORD`,
/// `NATTER_THROTTLED`, `NATTER_LOGIN_UNREACHABLE`, `NATTER_LOGIN_FAILED`;
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe to call from
/// any thread.
///
/// # Safety
/// `old_password` and `new_password` must be NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn natter_client_change_password(
    client: *mut NatterClient,
    old_password: *const c_char,
    new_password: *const c_char,
    revoke_others: bool,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (old, new) = unsafe { (str_arg(old_password)?, str_arg(new_password)?) };
        handle::get(client)?
            .client
            .change_password(old, new, revoke_others)
            .map_err(account_result)
    })
}

/// Log out on this device: stop the client's node if it runs (the user is published as
/// offline; the call, if any, ends) and forget the certificate, so that the next
/// `natter_client_login` needs the password. The device keeps its keys and stays one of the
/// account's devices. Blocks while the node stops (as `natter_client_stop`).
///
/// Returns `NATTER_NOT_LOGGED_IN`, `NATTER_IO_ERROR` (the certificate file could not be
/// removed), `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_client_logout(client: *mut NatterClient) -> NatterResult {
    boundary::result(|| handle::get(client)?.client.logout().map_err(account_result))
}

/// The size of a buffer that always holds a device's credentials
/// (`natter_client_export_credentials`): today's format needs at most 290 bytes; the limit
/// leaves room for later formats.
pub const NATTER_CREDENTIALS_MAX_LEN: usize = 512;

const _: () = assert!(natter::MAX_CREDENTIALS_LEN <= NATTER_CREDENTIALS_MAX_LEN);

/// Write the device's credentials (its secret keys, made now if it has none yet, and its
/// latest certificate) to `out` (`out_cap` bytes; `NATTER_CREDENTIALS_MAX_LEN` always
/// suffices) and their length to `*out_len`: what an application keeps in the platform's
/// keychain and passes back as `NatterOptions::credentials` (version 3) at the next start,
/// to be the same device and log in without the password while the certificate can be
/// renewed. Export again after each login and `NATTER_EVENT_CERTIFICATE_RENEWED`: the
/// certificate changes. The bytes are secret: whoever has them can act as this device until
/// it is revoked.
///
/// Returns `NATTER_BUFFER_TOO_SMALL` when `out_cap` is too small (`*out_len` says how many
/// bytes are needed), `NATTER_IO_ERROR` when the keys in the data directory cannot be read,
/// `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or valid for `out_cap` bytes of writes; `out_len` NULL or valid for one
/// write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_export_credentials(
    client: *mut NatterClient,
    out: *mut u8,
    out_cap: usize,
    out_len: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_len)?;
        let c = handle::get(client)?;
        let bytes = c.client.credentials().map_err(|e| {
            let d = os(&e);
            last_error::record(
                NatterResult::NatterIoError,
                format!("device credentials: {e}"),
                d,
            )
        })?;
        let bytes = bytes.to_bytes();
        // SAFETY: out_len is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_len, bytes.len()) }?;
        if out.is_null() || out_cap < bytes.len() {
            return Err(NatterResult::NatterBufferTooSmall);
        }
        // SAFETY: out is non-NULL and valid for out_cap >= bytes.len() writes (caller's
        // promise).
        unsafe { boundary::copy_out_slice(&bytes, out) }
    })
}
