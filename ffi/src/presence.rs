//! This user's presence on this device: availability, mood, away after idle.

use std::ffi::c_char;
use std::time::Duration;

use natter::{Availability, PresenceError};

use crate::boundary::{self, opt_str_arg};
use crate::handle::{self, NatterClient};
use crate::last_error::{self, Detail};
use crate::result::NatterResult;

/// How available a user is (`natter_client_set_presence`, `natter_client_get_presence`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterAvailability {
    /// Online: calls ring.
    NatterAvailabilityOnline = 1,
    /// Away: calls ring.
    NatterAvailabilityAway = 2,
    /// Do not disturb: calls are refused with Busy and do not ring
    /// (`NATTER_EVENT_CALL_REJECTED_BUSY` reports each).
    NatterAvailabilityDoNotDisturb = 3,
    /// Looks offline to everyone, search results included; can still call.
    NatterAvailabilityInvisible = 4,
    /// Not online (how others look; not settable).
    NatterAvailabilityOffline = 5,
}

pub(crate) fn to_c(a: Availability) -> NatterAvailability {
    match a {
        Availability::Online => NatterAvailability::NatterAvailabilityOnline,
        Availability::Away => NatterAvailability::NatterAvailabilityAway,
        Availability::DoNotDisturb => NatterAvailability::NatterAvailabilityDoNotDisturb,
        Availability::Invisible => NatterAvailability::NatterAvailabilityInvisible,
        _ => NatterAvailability::NatterAvailabilityOffline,
    }
}

fn from_c(v: u32) -> Option<Availability> {
    Some(match v {
        1 => Availability::Online,
        2 => Availability::Away,
        3 => Availability::DoNotDisturb,
        4 => Availability::Invisible,
        5 => Availability::Offline,
        _ => return None,
    })
}

/// Set this user's presence on this device: `availability` (a `NatterAvailability`) and a
/// `mood` (NULL or `""`: none; at most 256 bytes). Do not disturb refuses calls with Busy;
/// invisible publishes the device as offline in the global index (it can still call). Does
/// not block.
///
/// Returns `NATTER_INVALID_ARGUMENT` (an unknown availability, `OFFLINE`, which is not
/// settable, or a mood too long), `NATTER_INVALID_UTF8`, `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `mood` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn natter_client_set_presence(
    client: *mut NatterClient,
    availability: u32,
    mood: *const c_char,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let mood = unsafe { opt_str_arg(mood) }?.unwrap_or_default();
        let c = handle::get(client)?;
        let a = from_c(availability).ok_or(NatterResult::NatterInvalidArgument)?;
        c.client.set_presence(a, mood).map_err(|e| {
            let r = match e {
                PresenceError::Closed => NatterResult::NatterInvalidHandle,
                _ => NatterResult::NatterInvalidArgument,
            };
            last_error::record(r, e, Detail::default())
        })
    })
}

/// This user's presence in effect on this device: `*out_availability` (a
/// `NatterAvailability`), and the mood copied into `mood` (`len` bytes) as a NUL-terminated
/// string, its length in `*mood_len` (written even when `mood` is too small: then
/// `NATTER_BUFFER_TOO_SMALL`, and `*out_availability` is written too).
///
/// Returns `NATTER_BUFFER_TOO_SMALL`, `NATTER_NULL_ARGUMENT` (`out_availability` or
/// `mood_len` NULL), `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out_availability` and `mood_len` must be NULL or valid for one write; `mood` NULL or
/// valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn natter_client_get_presence(
    client: *mut NatterClient,
    out_availability: *mut u32,
    mood: *mut c_char,
    len: usize,
    mood_len: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_availability)?;
        boundary::check_out(mood_len)?;
        let p = handle::get(client)?.client.presence();
        // SAFETY: out_availability is non-NULL (checked) and valid for one write.
        unsafe { boundary::write_out(out_availability, to_c(p.availability) as u32)? };
        // SAFETY: mood is NULL or valid for len bytes, mood_len valid for one write (the
        // caller's promise).
        unsafe { boundary::copy_str(&p.mood, mood, len, mood_len) }
    })
}

/// Turn "online" into "away" once the user has been idle for `seconds` (0: never), as told
/// by `natter_client_report_idle`.
///
/// Returns `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_client_set_away_after(
    client: *mut NatterClient,
    seconds: u32,
) -> NatterResult {
    boundary::result(|| {
        let after = (seconds > 0).then(|| Duration::from_secs(u64::from(seconds)));
        handle::get(client)?.client.set_away_after(after);
        Ok(())
    })
}

/// Tell how long the user has been idle, in seconds (0 on activity; from the platform's
/// input idle time). Cheap: call it every few seconds.
///
/// Returns `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_client_report_idle(
    client: *mut NatterClient,
    seconds: u32,
) -> NatterResult {
    boundary::result(|| {
        handle::get(client)?
            .client
            .report_idle(Duration::from_secs(u64::from(seconds)));
        Ok(())
    })
}
