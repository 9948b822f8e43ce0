//! The ABI boundary: panics become results, and raw C arguments become Rust values here.
//!
//! Every exported function runs its body through [`result`] or [`value_or`], so a panic
//! inside Natter never unwinds into C (which would be undefined behaviour): it becomes
//! `NATTER_PANIC`, or the documented fallback value of a function that returns no result.
//! The argument helpers check for NULL (a `NATTER_NULL_ARGUMENT` result) and UTF-8 (a
//! `NATTER_INVALID_UTF8` result) before anything is read; they are the only places where
//! pointers from C are dereferenced, apart from the event and struct copies documented in
//! their own modules.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::result::NatterResult;

/// Run `f` inside a panic boundary: `Ok` becomes `NATTER_OK`, `Err(r)` becomes `r`, a panic
/// becomes `NATTER_PANIC`.
///
/// `AssertUnwindSafe` is right here: after a panic the only shared state is behind mutexes
/// whose poisoning every lock site ignores on purpose (the data they guard are queues and
/// tables that stay consistent between statements), so the object stays usable.
///
/// A failure is recorded for `natter_last_error_message` (with the specifics the function
/// recorded through [`crate::last_error::record`], else the result's own message).
pub(crate) fn result(f: impl FnOnce() -> Result<(), NatterResult>) -> NatterResult {
    crate::last_error::begin();
    let r = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => NatterResult::NatterOk,
        Ok(Err(r)) => r,
        Err(_) => NatterResult::NatterPanic,
    };
    crate::last_error::end(r);
    r
}

/// Run `f` inside a panic boundary, returning `fallback` if it panics.
pub(crate) fn value_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Lock a mutex, ignoring poisoning (see [`result`] for why that is sound here).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device id as people see it (12 hexadecimal digits), NUL-terminated, for C structs.
pub(crate) fn id_text(device: &natter::DeviceId) -> [c_char; 13] {
    let mut text = [0 as c_char; 13];
    for (i, b) in device.to_string().bytes().take(12).enumerate() {
        text[i] = b as c_char;
    }
    text
}

/// Read-lock an `RwLock`, ignoring poisoning (as [`lock`]).
pub(crate) fn lock_read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-lock an `RwLock`, ignoring poisoning (as [`lock`]).
pub(crate) fn lock_write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// Borrow a required C string argument.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that stays valid and unchanged for
/// `'a` (the duration of the exported call).
pub(crate) unsafe fn str_arg<'a>(p: *const c_char) -> Result<&'a str, NatterResult> {
    if p.is_null() {
        return Err(NatterResult::NatterNullArgument);
    }
    // SAFETY: p is non-NULL, and the caller guarantees a NUL-terminated string valid for 'a.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| NatterResult::NatterInvalidUtf8)
}

/// Borrow an optional C string argument (NULL gives `None`).
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(p: *const c_char) -> Result<Option<&'a str>, NatterResult> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's guarantee is passed on unchanged.
    unsafe { str_arg(p) }.map(Some)
}

/// Fail with `NATTER_NULL_ARGUMENT` when an output pointer is NULL (checked before any work,
/// so nothing happens when the call cannot report its result).
pub(crate) fn check_out<T>(p: *mut T) -> Result<(), NatterResult> {
    if p.is_null() {
        Err(NatterResult::NatterNullArgument)
    } else {
        Ok(())
    }
}

/// Write `v` through the output pointer `p`.
///
/// # Safety
/// `p` must be NULL or valid for one (possibly unaligned) write of a `T`.
pub(crate) unsafe fn write_out<T>(p: *mut T, v: T) -> Result<(), NatterResult> {
    check_out(p)?;
    // SAFETY: p is non-NULL and the caller guarantees it is valid for one write of a T;
    // write_unaligned makes no alignment assumption about memory the application owns.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Borrow `n` elements starting at `p` (`p` may be NULL only when `n` is 0).
///
/// # Safety
/// When `n > 0`, `p` must be NULL or point to `n` initialised, properly aligned `T`s that
/// stay valid and are not written to by anyone else during the exported call.
pub(crate) unsafe fn slice_arg<'a, T>(p: *const T, n: usize) -> Result<&'a [T], NatterResult> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(NatterResult::NatterNullArgument);
    }
    if !p.is_aligned() || n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(NatterResult::NatterInvalidArgument);
    }
    // SAFETY: p is non-NULL and aligned, n is within isize::MAX bytes, and the caller
    // guarantees n initialised elements valid for the call.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Check that `p` can take `n` elements of `T` (NULL only when `n` is 0; aligned).
pub(crate) fn check_out_slice<T>(p: *mut T, n: usize) -> Result<(), NatterResult> {
    if n == 0 {
        return Ok(());
    }
    if p.is_null() {
        return Err(NatterResult::NatterNullArgument);
    }
    if !p.is_aligned() || n > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(NatterResult::NatterInvalidArgument);
    }
    Ok(())
}

/// Copy `src` to the caller's buffer `p` (which holds at least `src.len()` elements). The
/// buffer is written through the raw pointer, never borrowed as a Rust slice, so it may be
/// uninitialised memory.
///
/// # Safety
/// When `src` is not empty, `p` must be NULL or valid for `src.len()` writes of `T` and not
/// accessed by anyone else during the exported call.
pub(crate) unsafe fn copy_out_slice<T: Copy>(src: &[T], p: *mut T) -> Result<(), NatterResult> {
    check_out_slice(p, src.len())?;
    if src.is_empty() {
        return Ok(());
    }
    // SAFETY: p is non-NULL and aligned (checked), valid for src.len() writes (the caller's
    // guarantee), and cannot overlap src, which is memory Rust owns.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
    Ok(())
}

/// Copy `s` into the caller's buffer `buf` of `len` bytes as a NUL-terminated string and
/// write its length (without the NUL) to `*out_len`: the "ask size, then fill" pattern.
/// `*out_len` is written even when the buffer is too small (or NULL), so the caller can
/// allocate and call again.
///
/// # Safety
/// `buf` must be NULL or valid for `len` bytes of writes; `out_len` must be NULL or valid for
/// one write.
pub(crate) unsafe fn copy_str(
    s: &str,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> Result<(), NatterResult> {
    // SAFETY: the caller's guarantee for out_len is passed on.
    unsafe { write_out(out_len, s.len())? };
    if buf.is_null() || len < s.len() + 1 {
        return Err(NatterResult::NatterBufferTooSmall);
    }
    // SAFETY: buf is non-NULL and valid for len >= s.len() + 1 bytes of writes (checked above,
    // guaranteed by the caller); the source is a Rust string, distinct from caller memory.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast(), buf, s.len());
        buf.add(s.len()).write(0);
    }
    Ok(())
}
