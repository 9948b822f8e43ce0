//! # natter-ffi: the C ABI of Natter
//!
//! Builds `libnatter` (shared and static) whose interface is `include/natter.h`, generated
//! from this crate by cbindgen (`ffi/cbindgen.toml`) and checked in; a test fails when the
//! checked-in header differs from what this source generates (`make header` regenerates it).
//!
//! Conventions (after rustls-ffi and c-toxcore): functions are named `natter_object_verb`;
//! every fallible function returns a [`NatterResult`] whose values are stable and never reused;
//! [`natter_result_message`] renders any of them; every exported body runs inside a panic
//! boundary (`boundary`); every pointer argument is checked for NULL; inputs come before
//! outputs, each buffer is followed by its length, and outputs are written only on success
//! (except the documented "ask size, then fill" lengths).
//!
//! | module | C objects and functions |
//! |---|---|
//! | [`result`] | `NatterResult`, `natter_result_message` |
//! | this file | versions: `natter_version`, `natter_abi_version`, `natter_version_copy` |
//! | [`options`] | `NatterOptions`, `natter_options_default` |
//! | [`client`] | `NatterClient`: new, free, register, login, start, stop, state, describe, search |
//! | [`contacts`] | the buddy list: `NatterContactList`, add, remove, block, nickname, group, sync |
//! | [`presence`] | `NatterAvailability`: set and read presence, away after idle |
//! | [`events`] | `NatterEvent`: the queue and its file descriptor, the callback, `natter_event_free` |
//! | [`call`] | calls: start, answer, decline, hang up, hold, resume, mute, statistics |
//! | [`audio`] | application PCM: push and pull, the sample rate and frame size |
//!
//! Inside, [`handle`] turns handles into clients (a handle is a token, never dereferenced).
//! A client is a [`natter::Client`], the Rust API: logging in, the node, its event thread,
//! calls and their audio all live there, and this crate only translates (options, results,
//! events, call ids). `unsafe` appears only where C pointers are read or written, each block
//! with the reason it is sound.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::c_char;

// The C objects, in the order natter.h presents them (cbindgen follows this order; the
// blank lines keep rustfmt from sorting them).
pub mod result;

pub mod last_error;

pub mod options;

pub mod handle;

pub mod client;

pub mod account;

pub mod contacts;

pub mod presence;

pub mod chat;

pub mod events;

pub mod call;

pub mod audio;

pub mod log;

// The Rust side.
mod boundary;

pub use result::{natter_result_message, NatterResult};

/// The ABI version: bumped in its major part on any incompatible change to `natter.h`.
pub const NATTER_ABI_MAJOR: u32 = 0;
/// Minor part of the ABI version: additions only (before 1.0, any change).
pub const NATTER_ABI_MINOR: u32 = 3;
/// Patch part of the ABI version.
pub const NATTER_ABI_PATCH: u32 = 0;

/// The library's version as a NUL-terminated UTF-8 string, e.g. `"0.1.0"`.
///
/// The string is static: the caller must not free it. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_version() -> *const c_char {
    boundary::value_or(c"?".as_ptr(), || {
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
    })
}

/// The ABI version as one number: `major << 16 | minor << 8 | patch`.
///
/// An application built against header version `H` (`NATTER_ABI_*`) works with a library of
/// version `L` when `L >> 16 == H >> 16` and `L >= H`, and, while the major is 0 (when every
/// minor version may break the ABI), `(L >> 8 & 0xff) == (H >> 8 & 0xff)`. See docs/abi.md.
/// Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_abi_version() -> u32 {
    boundary::value_or(0, || {
        NATTER_ABI_MAJOR << 16 | NATTER_ABI_MINOR << 8 | NATTER_ABI_PATCH
    })
}

/// Copy the version string into `buf` (capacity `len` bytes, NUL included) and write its
/// length without the NUL to `*out_len`. The ask-size-then-fill pattern for bindings that
/// cannot hold static pointers: call with `buf == NULL` to learn the size.
///
/// Returns `NATTER_NULL_ARGUMENT` when `out_len` is NULL, `NATTER_BUFFER_TOO_SMALL` when `buf` is
/// NULL or too small (`*out_len` is still written).
///
/// # Safety
/// `buf` must be NULL or valid for `len` bytes of writes; `out_len` must be NULL or valid for
/// one write.
#[no_mangle]
pub unsafe extern "C" fn natter_version_copy(
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller's guarantees for buf and out_len are passed on.
        unsafe { boundary::copy_str(env!("CARGO_PKG_VERSION"), buf, len, out_len) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn version_and_messages() {
        // SAFETY: natter_version returns a static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(natter_version()) };
        assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(natter_abi_version(), NATTER_ABI_MINOR << 8);
        for r in 0..10 {
            // SAFETY: natter_result_message always returns a static NUL-terminated string.
            let m = unsafe { CStr::from_ptr(natter_result_message(r)) };
            assert!(!m.to_bytes().is_empty());
        }
    }

    #[test]
    fn version_copy_checks_every_pointer() {
        let mut len = 0usize;
        // SAFETY: NULL buffers are allowed; out_len points to a live usize.
        unsafe {
            assert_eq!(
                natter_version_copy(std::ptr::null_mut(), 0, std::ptr::null_mut()),
                NatterResult::NatterNullArgument
            );
            assert_eq!(
                natter_version_copy(std::ptr::null_mut(), 0, &mut len),
                NatterResult::NatterBufferTooSmall
            );
        }
        let mut buf = vec![0 as c_char; len + 1];
        // SAFETY: buf has len + 1 bytes.
        let r = unsafe { natter_version_copy(buf.as_mut_ptr(), buf.len(), &mut len) };
        assert_eq!(r, NatterResult::NatterOk);
        // SAFETY: natter_version_copy NUL-terminated the buffer.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    }
}
