//! Client handles: what C holds, and how a handle becomes a client again.
//!
//! A `NatterClient *` is **a token, not an address**: its value is a number drawn from a
//! counter that never repeats, and the registry below maps live tokens to the clients they
//! name. Natter never dereferences a handle, so a NULL, freed, stale or made-up handle is
//! simply not found and gives `NATTER_INVALID_HANDLE` (NULL gives `NATTER_NULL_ARGUMENT`)
//! instead of undefined behaviour: using a client after `natter_client_free`, or freeing it
//! twice, is a reported error, not a crash.
//!
//! Each call looks its client up and holds a reference (`Arc`) for its duration, so a client
//! freed by one thread while another is inside a call on it stays alive until that call
//! returns; the freeing thread tears down its threads and sockets first, so nothing of it
//! runs after `natter_client_free` returns except calls already in progress.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::boundary::lock;
use crate::client::Client;
use crate::result::NatterResult;

/// A Natter client: one user's node on the network, its calls and its events.
///
/// Opaque: created by `natter_client_new`, destroyed by `natter_client_free`. The pointer is
/// a handle, never dereferenced; every function checks it and answers
/// `NATTER_INVALID_HANDLE` for one that is not live.
pub struct NatterClient {
    _private: [u8; 0],
}

/// Live clients by token.
static CLIENTS: Mutex<BTreeMap<usize, Arc<Client>>> = Mutex::new(BTreeMap::new());
/// The next token. Tokens start high and step by 16, so small integers and typical garbage
/// (0, 1, -1) are never live handles.
static NEXT: AtomicUsize = AtomicUsize::new(0x4e00_0000);

/// Register `client` and return its handle.
pub(crate) fn insert(client: Arc<Client>) -> *mut NatterClient {
    let token = NEXT.fetch_add(16, Ordering::Relaxed);
    lock(&CLIENTS).insert(token, client);
    std::ptr::without_provenance_mut(token)
}

/// The client behind `handle`.
pub(crate) fn get(handle: *const NatterClient) -> Result<Arc<Client>, NatterResult> {
    if handle.is_null() {
        return Err(NatterResult::NatterNullArgument);
    }
    lock(&CLIENTS)
        .get(&handle.addr())
        .cloned()
        .ok_or(NatterResult::NatterInvalidHandle)
}

/// Unregister `handle` and return its client (the caller tears it down).
pub(crate) fn remove(handle: *const NatterClient) -> Result<Arc<Client>, NatterResult> {
    lock(&CLIENTS)
        .remove(&handle.addr())
        .ok_or(NatterResult::NatterInvalidHandle)
}
