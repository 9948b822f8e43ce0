//! The one result type of the C ABI, and its messages.

use std::ffi::{c_char, CStr};

/// Result of every fallible Natter function.
///
/// Values are grouped by subsystem (0-99 general, 100-199 login, 200-299 the node, 300-399
/// calls and audio), stable, and never reused for another meaning; new values may be added in
/// minor versions, so treat an unknown value as a failure and show
/// `natter_result_message(value)`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterResult {
    /// Success.
    NatterOk = 0,
    /// A Rust panic was caught at the ABI boundary (a bug in Natter: please report it). The
    /// object it happened on stays usable.
    NatterPanic = 1,
    /// A required pointer argument was NULL.
    NatterNullArgument = 2,
    /// A string argument was not valid UTF-8.
    NatterInvalidUtf8 = 3,
    /// A buffer was too small; the needed size was written where the function says.
    NatterBufferTooSmall = 4,
    /// A handle was invalid or already freed.
    NatterInvalidHandle = 5,
    /// An argument had a value outside its range (an unknown enum value, a malformed
    /// address, an invalid user name).
    NatterInvalidArgument = 6,
    /// A struct's `version` field names a version this library does not know.
    NatterUnsupportedVersion = 7,
    /// No event is waiting (not a failure: try again when the event file descriptor is
    /// readable).
    NatterNoEvent = 8,
    /// The operation is not available on this platform or in this build.
    NatterUnsupported = 9,
    /// A file or socket operation failed (unreadable network file, data directory that cannot
    /// be created, address already in use).
    NatterIoError = 10,
    /// (ABI 0.3.) The background request was cancelled (`natter_client_cancel`).
    NatterCancelled = 11,
    /// (ABI 0.3.) No background request with this id is running (it ended, its event is on
    /// its way or was delivered, or it never existed).
    NatterUnknownRequest = 12,
    /// The login server could not be reached, or its TLS certificate did not match the one
    /// the network file pins.
    NatterLoginUnreachable = 100,
    /// Wrong password.
    NatterWrongPassword = 101,
    /// No such user: register first.
    NatterUnknownUser = 102,
    /// The user name is taken (registration).
    NatterNameTaken = 103,
    /// The user name breaks the rules: 3 to 32 characters, ASCII letters, digits, `.`, `_`,
    /// `-`, starting with a letter.
    NatterInvalidUserName = 104,
    /// The password is too weak: at least 10 characters, and not the user name.
    NatterWeakPassword = 105,
    /// Too many failed attempts, or too many new devices or accounts lately: wait and try
    /// again.
    NatterThrottled = 106,
    /// This version of Natter is too old for the network: upgrade.
    NatterUpgradeRequired = 107,
    /// This device was revoked by the login authority.
    NatterRevoked = 108,
    /// The stored certificate cannot be renewed (none stored, or expired too long ago): log in
    /// with the password.
    NatterPasswordNeeded = 109,
    /// Logging in failed for another reason (a server error, an unacceptable certificate).
    NatterLoginFailed = 110,
    /// No such device on this account.
    NatterUnknownDevice = 111,
    /// A device cannot revoke itself: revoke it from another device.
    NatterThisDevice = 112,
    /// The client has not logged in yet.
    NatterNotLoggedIn = 200,
    /// The client is not started (`natter_client_start`).
    NatterNotStarted = 201,
    /// The client is already started.
    NatterAlreadyStarted = 202,
    /// No call with this id (never existed, or ended long ago).
    NatterUnknownCall = 300,
    /// The call is not in a state where this is possible (answering an outgoing call,
    /// holding a call that is not connected, anything on a call that ended).
    NatterWrongCallState = 301,
    /// This client already has a call: a device has at most one.
    NatterInCall = 302,
    /// The call has no application audio: it is not connected, or the client uses the
    /// built-in audio devices (`NATTER_AUDIO_DEVICES`).
    NatterNoAudio = 303,
    /// (ABI 0.3.) The call's audio does not come from (or go to) a device (WAV, tone or the
    /// application's PCM): there is no device to switch.
    NatterNotDeviceAudio = 304,
    /// (ABI 0.3.) The audio device could not be opened (no such device, busy, unplugged):
    /// the call keeps the one it had. `natter_last_error_message` says why.
    NatterAudioDeviceFailed = 305,
    /// (ABI 0.3.) The buddy list's backup in the network was refused (altered, truncated,
    /// older than one this device saw, another account's, from the future): the local list is
    /// kept as it was.
    NatterBackupRefused = 400,
    /// (ABI 0.3.) The buddy list is full, or the contact is in too many groups.
    NatterListFull = 401,
    /// (ABI 0.3.) The buddy list backup's key does not open with this password (it is
    /// wrapped under another one): log in with the password on a device that holds the list.
    NatterKeyUnavailable = 402,
    /// (ABI 0.3.) Other devices stored the buddy list again and again during the sync: try
    /// again.
    NatterSyncConflict = 403,
}

impl NatterResult {
    /// The static NUL-terminated message of this result.
    pub fn message(self) -> &'static CStr {
        match self {
            Self::NatterOk => c"ok",
            Self::NatterPanic => c"internal error (panic caught at the ABI boundary)",
            Self::NatterNullArgument => c"a required pointer argument was NULL",
            Self::NatterInvalidUtf8 => c"a string argument was not valid UTF-8",
            Self::NatterBufferTooSmall => c"buffer too small",
            Self::NatterInvalidHandle => c"invalid or freed handle",
            Self::NatterInvalidArgument => c"invalid argument value",
            Self::NatterUnsupportedVersion => c"unsupported struct version",
            Self::NatterNoEvent => c"no event waiting",
            Self::NatterUnsupported => c"not supported on this platform",
            Self::NatterIoError => c"file or socket error",
            Self::NatterCancelled => c"cancelled",
            Self::NatterUnknownRequest => c"no such request running",
            Self::NatterLoginUnreachable => {
                c"login server unreachable (or its certificate does not match the pin)"
            }
            Self::NatterWrongPassword => c"wrong password",
            Self::NatterUnknownUser => c"unknown user: register first",
            Self::NatterNameTaken => c"that user name is taken",
            Self::NatterInvalidUserName => {
                c"invalid user name: 3-32 characters, letters, digits, '.', '_', '-', starting with a letter"
            }
            Self::NatterWeakPassword => {
                c"password too weak: at least 10 characters, and not the user name"
            }
            Self::NatterThrottled => c"too many attempts: try again later",
            Self::NatterUpgradeRequired => c"this version of Natter is too old: upgrade",
            Self::NatterRevoked => c"this device was revoked",
            Self::NatterPasswordNeeded => c"the password is needed: log in with it",
            Self::NatterLoginFailed => c"login failed",
            Self::NatterUnknownDevice => c"no such device on this account",
            Self::NatterThisDevice => c"a device cannot revoke itself: revoke it from another device",
            Self::NatterNotLoggedIn => c"not logged in",
            Self::NatterNotStarted => c"not started",
            Self::NatterAlreadyStarted => c"already started",
            Self::NatterUnknownCall => c"unknown call",
            Self::NatterWrongCallState => c"not possible in this call state",
            Self::NatterInCall => c"already in a call",
            Self::NatterNoAudio => c"the call has no application audio now",
            Self::NatterNotDeviceAudio => c"the call does not use an audio device",
            Self::NatterAudioDeviceFailed => c"the audio device could not be opened",
            Self::NatterBackupRefused => {
                c"the buddy list backup was refused (altered, truncated or rolled back); the local list is kept"
            }
            Self::NatterListFull => c"the buddy list is full, or the contact is in too many groups",
            Self::NatterKeyUnavailable => {
                c"the buddy list backup's key does not open with this password"
            }
            Self::NatterSyncConflict => {
                c"the buddy list changed on other devices during the sync: try again"
            }
        }
    }

    /// Every value, for tests and for `natter_result_message`.
    pub(crate) const ALL: [NatterResult; 39] = [
        Self::NatterOk,
        Self::NatterPanic,
        Self::NatterNullArgument,
        Self::NatterInvalidUtf8,
        Self::NatterBufferTooSmall,
        Self::NatterInvalidHandle,
        Self::NatterInvalidArgument,
        Self::NatterUnsupportedVersion,
        Self::NatterNoEvent,
        Self::NatterUnsupported,
        Self::NatterIoError,
        Self::NatterCancelled,
        Self::NatterUnknownRequest,
        Self::NatterLoginUnreachable,
        Self::NatterWrongPassword,
        Self::NatterUnknownUser,
        Self::NatterNameTaken,
        Self::NatterInvalidUserName,
        Self::NatterWeakPassword,
        Self::NatterThrottled,
        Self::NatterUpgradeRequired,
        Self::NatterRevoked,
        Self::NatterPasswordNeeded,
        Self::NatterLoginFailed,
        Self::NatterUnknownDevice,
        Self::NatterThisDevice,
        Self::NatterNotLoggedIn,
        Self::NatterNotStarted,
        Self::NatterAlreadyStarted,
        Self::NatterUnknownCall,
        Self::NatterWrongCallState,
        Self::NatterInCall,
        Self::NatterNoAudio,
        Self::NatterNotDeviceAudio,
        Self::NatterAudioDeviceFailed,
        Self::NatterBackupRefused,
        Self::NatterListFull,
        Self::NatterKeyUnavailable,
        Self::NatterSyncConflict,
    ];
}

/// A static, NUL-terminated English description of `result` (any value, known or not).
///
/// Never NULL; unknown values give `"unknown result"`. The string is static: the caller must
/// not free it. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_result_message(result: u32) -> *const c_char {
    crate::boundary::value_or(c"internal error".as_ptr(), || {
        let msg = NatterResult::ALL
            .iter()
            .find(|r| **r as u32 == result)
            .map_or(c"unknown result", |r| r.message());
        msg.as_ptr()
    })
}
