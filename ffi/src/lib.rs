//! # natter-ffi: the C ABI of Natter
//!
//! Builds `libnatter` (shared and static) whose interface is `include/natter.h`, generated
//! from this crate by cbindgen (`ffi/cbindgen.toml`) and checked in; a test fails when the
//! checked-in header differs from what this source generates (`make header` regenerates it).
//!
//! Conventions (after rustls-ffi and c-toxcore): functions are named `natter_object_verb`;
//! every fallible function returns a [`NatterResult`] whose values are stable and never reused;
//! [`natter_result_message`] renders any of them; every exported body runs inside a panic
//! boundary. The node, call and audio objects arrive with the C ABI issue; this first slice
//! fixes the versioning and error conventions they will use.
#![deny(missing_docs)]

use std::ffi::c_char;
use std::panic::{catch_unwind, UnwindSafe};

/// The ABI version: bumped in its major part on any incompatible change to `natter.h`.
pub const NATTER_ABI_MAJOR: u32 = 0;
/// Minor part of the ABI version: additions only.
pub const NATTER_ABI_MINOR: u32 = 1;
/// Patch part of the ABI version.
pub const NATTER_ABI_PATCH: u32 = 0;

/// Result of every fallible Natter function. Values are grouped by subsystem, stable, and never
/// reused for another meaning.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterResult {
    /// Success.
    NatterOk = 0,
    /// A Rust panic was caught at the ABI boundary (a bug in Natter: please report it).
    NatterPanic = 1,
    /// A required pointer argument was NULL.
    NatterNullArgument = 2,
    /// A string argument was not valid UTF-8.
    NatterInvalidUtf8 = 3,
    /// A buffer was too small; the needed size was written where the function says.
    NatterBufferTooSmall = 4,
    /// A handle was invalid or already freed.
    NatterInvalidHandle = 5,
}

/// Run `f` inside a panic boundary: a panic becomes [`NatterResult::NatterPanic`].
fn boundary(f: impl FnOnce() -> NatterResult + UnwindSafe) -> NatterResult {
    catch_unwind(f).unwrap_or(NatterResult::NatterPanic)
}

/// The library's version as a NUL-terminated UTF-8 string, e.g. `"0.1.0"`.
///
/// The string is static: the caller must not free it. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version as one number: `major << 16 | minor << 8 | patch`.
///
/// An application built against header version `H` works with a library of version `L` when
/// `L >> 16 == H >> 16` and `L >= H`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_abi_version() -> u32 {
    NATTER_ABI_MAJOR << 16 | NATTER_ABI_MINOR << 8 | NATTER_ABI_PATCH
}

/// A static, NUL-terminated English description of `result`. Never NULL; unknown values give
/// `"unknown result"`. The caller must not free it. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_result_message(result: u32) -> *const c_char {
    let msg: &'static str = match result {
        0 => "ok\0",
        1 => "internal error (panic caught at the ABI boundary)\0",
        2 => "a required pointer argument was NULL\0",
        3 => "a string argument was not valid UTF-8\0",
        4 => "buffer too small\0",
        5 => "invalid or freed handle\0",
        _ => "unknown result\0",
    };
    msg.as_ptr().cast()
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
    boundary(|| {
        let version = env!("CARGO_PKG_VERSION").as_bytes();
        if out_len.is_null() {
            return NatterResult::NatterNullArgument;
        }
        // SAFETY: out_len is non-NULL and the caller guarantees it is valid for one write.
        unsafe { out_len.write(version.len()) };
        if buf.is_null() || len < version.len() + 1 {
            return NatterResult::NatterBufferTooSmall;
        }
        // SAFETY: buf is non-NULL and valid for `len >= version.len() + 1` bytes of writes
        // (checked above, guaranteed by the caller); the source is a distinct static string.
        unsafe {
            std::ptr::copy_nonoverlapping(version.as_ptr().cast(), buf, version.len());
            buf.add(version.len()).write(0);
        }
        NatterResult::NatterOk
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
