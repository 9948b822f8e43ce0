//! Why the last call failed, per thread: `natter_last_error_message` and
//! `natter_last_error_detail` (as rustls-ffi and libcurl give a text and a code with each
//! failure).
//!
//! Every exported function that returns a failure records it on the calling thread: the
//! result, an English sentence with the specifics (which address was unreachable and the
//! operating system's error, how long to wait, the version needed), and the typed parts of
//! those specifics. Success leaves the record as it was (like `errno`), and so do
//! `NATTER_NO_EVENT` and `NATTER_BUFFER_TOO_SMALL` (an answer to a size query), which are not
//! failures.

use std::cell::RefCell;
use std::ffi::c_char;
use std::time::Duration;

use crate::boundary;
use crate::result::NatterResult;

/// The version of [`NatterErrorDetail`] this header describes.
pub const NATTER_ERROR_DETAIL_VERSION: u32 = 1;

/// The typed specifics of the last failure on this thread (`natter_last_error_detail`).
/// Set `version` to `NATTER_ERROR_DETAIL_VERSION` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterErrorDetail {
    /// Set by the caller: `NATTER_ERROR_DETAIL_VERSION`.
    pub version: u32,
    /// What the failing function returned (`NATTER_OK` when nothing failed on this thread
    /// yet).
    pub result: NatterResult,
    /// `NATTER_THROTTLED`: how long to wait before trying again, in milliseconds; else 0.
    pub retry_after_ms: u64,
    /// `NATTER_UPGRADE_REQUIRED`: the oldest version the network accepts, as
    /// "major.minor.patch" (NUL-terminated); else empty.
    pub minimum_version: [c_char; 16],
    /// The operating system's error number behind `NATTER_IO_ERROR` or
    /// `NATTER_LOGIN_UNREACHABLE` (an `errno` value), or 0.
    pub os_error: i32,
}

/// The typed specifics a failure may carry.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Detail {
    pub retry_after: Option<Duration>,
    pub minimum_version: Option<String>,
    pub os_error: Option<i32>,
}

#[derive(Debug)]
struct Last {
    result: NatterResult,
    message: String,
    detail: Detail,
    /// Recorded during the current call (so the boundary does not overwrite it).
    fresh: bool,
}

thread_local! {
    static LAST: RefCell<Last> = const {
        RefCell::new(Last {
            result: NatterResult::NatterOk,
            message: String::new(),
            detail: Detail {
                retry_after: None,
                minimum_version: None,
                os_error: None,
            },
            fresh: false,
        })
    };
}

/// A call starts: what it records from now on is its own.
pub(crate) fn begin() {
    // try_with: during thread exit (a thread-local destructor calling Natter) there may be no
    // record any more; nothing is recorded then.
    let _ = LAST.try_with(|l| l.borrow_mut().fresh = false);
}

/// Record a failure with its specifics; returns `result` (for `map_err` chains).
pub(crate) fn record(result: NatterResult, message: impl ToString, detail: Detail) -> NatterResult {
    let _ = LAST.try_with(|l| {
        *l.borrow_mut() = Last {
            result,
            message: message.to_string(),
            detail,
            fresh: true,
        }
    });
    result
}

/// A call ended with `result`: a failure nobody recorded with specifics gets the result's
/// own message.
pub(crate) fn end(result: NatterResult) {
    // Not failures: no event waiting, and the size query of the "ask size, then fill" pattern.
    if matches!(
        result,
        NatterResult::NatterOk | NatterResult::NatterNoEvent | NatterResult::NatterBufferTooSmall
    ) {
        return;
    }
    let fresh = LAST
        .try_with(|l| {
            let l = l.borrow();
            l.fresh && l.result == result
        })
        .unwrap_or(true);
    if !fresh {
        let message = result.message().to_string_lossy().into_owned();
        record(result, message, Detail::default());
    }
}

/// The operating system's error number in an I/O error, if any.
pub(crate) fn os_error(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

/// Copy the message of the last failure on this thread into `buf` (capacity `len` bytes) as
/// a NUL-terminated UTF-8 string, and its length (without the NUL) to `*out_len`: English
/// for people and logs, with the specifics (for example `login server 127.0.0.1:4000
/// unreachable: Connection refused (os error 111)`); not for parsing. Empty when nothing
/// failed on this thread yet. Ask for the size with `buf` NULL and `len` 0, then call again.
/// This function does not change the record.
///
/// Returns `NATTER_BUFFER_TOO_SMALL` (with `*out_len` set) or `NATTER_NULL_ARGUMENT`
/// (`out_len` NULL).
///
/// # Safety
/// `buf` must be NULL or valid for `len` bytes of writes; `out_len` NULL or valid for one
/// write.
#[no_mangle]
pub unsafe extern "C" fn natter_last_error_message(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> NatterResult {
    // Not through boundary::result: reading the record must not change it.
    let r = boundary::value_or(Err(NatterResult::NatterPanic), || {
        let message = LAST.with(|l| l.borrow().message.clone());
        // SAFETY: the caller's guarantees for buf, len and out_len are passed on.
        unsafe { boundary::copy_str(&message, buf, len, out_len) }
    });
    match r {
        Ok(()) => NatterResult::NatterOk,
        Err(r) => r,
    }
}

/// Fill `*out` with the typed specifics of the last failure on this thread (see
/// `NatterErrorDetail`). Set `out->version` to `NATTER_ERROR_DETAIL_VERSION` first. This
/// function does not change the record.
///
/// Returns `NATTER_NULL_ARGUMENT` (`out` NULL) or `NATTER_UNSUPPORTED_VERSION` (nothing
/// written).
///
/// # Safety
/// `out` must be NULL or point to a writable `NatterErrorDetail` whose `version` is set.
#[no_mangle]
pub unsafe extern "C" fn natter_last_error_detail(out: *mut NatterErrorDetail) -> NatterResult {
    let r = boundary::value_or(Err(NatterResult::NatterPanic), || {
        boundary::check_out(out)?;
        // SAFETY: out is non-NULL and points to a NatterErrorDetail whose first field, the
        // version, the caller has set.
        let version = unsafe { std::ptr::addr_of!((*out).version).read_unaligned() };
        if version != NATTER_ERROR_DETAIL_VERSION {
            return Err(NatterResult::NatterUnsupportedVersion);
        }
        let detail = LAST.with(|l| {
            let l = l.borrow();
            c_detail(l.result, &l.detail)
        });
        // SAFETY: out is non-NULL and holds a version-1 NatterErrorDetail (checked above, the
        // caller's promise), which is this struct.
        unsafe { boundary::write_out(out, detail) }
    });
    match r {
        Ok(()) => NatterResult::NatterOk,
        Err(r) => r,
    }
}

/// A result and its typed specifics in C form (version 1).
pub(crate) fn c_detail(result: NatterResult, detail: &Detail) -> NatterErrorDetail {
    let mut minimum_version = [0 as c_char; 16];
    if let Some(v) = &detail.minimum_version {
        for (i, b) in v.bytes().take(15).enumerate() {
            minimum_version[i] = b as c_char;
        }
    }
    NatterErrorDetail {
        version: NATTER_ERROR_DETAIL_VERSION,
        result,
        retry_after_ms: detail
            .retry_after
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        minimum_version,
        os_error: detail.os_error.unwrap_or(0),
    }
}
