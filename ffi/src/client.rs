//! The client object: create and free, register and log in, start and stop, state, search.

use std::ffi::c_char;
use std::sync::Arc;

use crate::boundary::{self, str_arg};
use crate::engine::Client;
use crate::handle::{self, NatterClient};
use crate::options::{NatterOptions, Settings};
use crate::result::NatterResult;

/// The version of `NatterNodeState` this header describes.
pub const NATTER_NODE_STATE_VERSION: u32 = 1;

/// What this node currently is.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterNodeRole {
    /// An ordinary node, attached to super nodes.
    NatterNodeClient = 0,
    /// A super node.
    NatterNodeSuperNode = 1,
}

/// The NAT this node is behind, as detected against its super nodes (RFC 5780).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterNatType {
    /// Not detected yet (not attached, or the probe is running).
    NatterNatUnknown = 0,
    /// A public address and no filtering.
    NatterNatOpen = 1,
    /// A public address behind a filtering firewall.
    NatterNatPublicFiltered = 2,
    /// Endpoint-independent mapping and filtering ("full cone").
    NatterNatFullCone = 3,
    /// Endpoint-independent mapping, address-dependent filtering ("restricted cone").
    NatterNatRestrictedCone = 4,
    /// Endpoint-independent mapping, address-and-port-dependent filtering ("port-restricted").
    NatterNatPortRestrictedCone = 5,
    /// Address-dependent mapping ("symmetric"): calls with another such node go through a
    /// relay.
    NatterNatSymmetric = 6,
    /// No UDP at all: everything goes over TCP.
    NatterNatUdpBlocked = 7,
}

/// What a search found (`NATTER_EVENT_SEARCH_RESULT`'s `code`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterSearchResult {
    /// The user exists: `count` of their devices are online.
    NatterSearchFound = 1,
    /// Definitely no such user in the index.
    NatterSearchNotFound = 2,
    /// The index could not answer (not attached, too few super nodes): try again.
    NatterSearchUnavailable = 3,
}

/// The state of a client's node, filled by `natter_client_get_state`. Set `version` to
/// `NATTER_NODE_STATE_VERSION` before the call: the library fills the fields of that version.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterNodeState {
    /// Set by the caller: `NATTER_NODE_STATE_VERSION`.
    pub version: u32,
    /// A login succeeded (the device holds a certificate).
    pub logged_in: bool,
    /// The node runs (`natter_client_start` succeeded and `natter_client_stop` was not
    /// called).
    pub started: bool,
    /// Super nodes this node is attached to now (0 to 2; 0 for a super node itself).
    pub super_nodes: u32,
    /// What the node is now.
    pub role: NatterNodeRole,
    /// The detected NAT.
    pub nat: NatterNatType,
    /// The UDP port the node listens on (0 when not started).
    pub udp_port: u16,
    /// Events dropped because the application did not take them (the queue holds 4096).
    pub events_dropped: u64,
}

/// Create a client from `options` and write its handle to `*out_client`. Nothing touches the
/// network yet: this reads the network file and creates the data directory. Then register
/// (once per account), log in, and start.
///
/// The client is owned by the caller: free it with `natter_client_free`. `options` and its
/// strings are copied and may be freed when this returns.
///
/// Returns `NATTER_NULL_ARGUMENT` when `options`, a required option string or `out_client` is
/// NULL, `NATTER_UNSUPPORTED_VERSION` for an unknown `options->version`,
/// `NATTER_INVALID_ARGUMENT` for a malformed `listen` address, an unknown role or audio mode,
/// or a super-node role with port 0, `NATTER_INVALID_UTF8` for a string that is not UTF-8,
/// `NATTER_IO_ERROR` when the network file cannot be read or the data directory created.
/// `*out_client` is written only on success. Safe to call from any thread.
///
/// # Safety
/// `options` must be NULL or point to a `NatterOptions` of the version its `version` field
/// states, whose strings are NULL or NUL-terminated; `out_client` must be NULL or valid for
/// one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_new(
    options: *const NatterOptions,
    out_client: *mut *mut NatterClient,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_client)?;
        // SAFETY: the caller's guarantee for options is passed on.
        let settings = unsafe { Settings::read(options) }?;
        let client = Client::new(settings)?;
        let h = handle::insert(Arc::new(client));
        // SAFETY: out_client is non-NULL (checked) and valid for one write (caller's promise).
        if let Err(e) = unsafe { boundary::write_out(out_client, h) } {
            if let Ok(c) = handle::remove(h) {
                c.close();
            }
            return Err(e);
        }
        Ok(())
    })
}

/// Free a client: stop it if started (its call ends, it publishes "offline" and saves its
/// super-node cache), stop the callbacks, close its event file descriptor, and invalidate the
/// handle and its call ids. When this returns, no callback of this client is running or will
/// run (unless it is called from that callback, which then finishes normally), and all its
/// threads have ended. Events not yet freed stay valid until `natter_event_free`.
///
/// `natter_client_free(NULL)` does nothing and returns `NATTER_OK`; a handle that is not live
/// (freed already, never valid) returns `NATTER_INVALID_HANDLE` and does nothing. Calls on
/// the client running in other threads when it is freed finish normally; later calls return
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_client_free(client: *mut NatterClient) -> NatterResult {
    boundary::result(|| {
        if client.is_null() {
            return Ok(());
        }
        let c = handle::remove(client)?;
        c.close();
        Ok(())
    })
}

/// Create the account `user` with `password` on the login server of the client's network.
/// Blocks for one exchange with the login server (up to 15 s; typically well under a second,
/// most of it the server hashing the password): do not call it from a UI thread. It does
/// not log in: call `natter_client_login` next.
///
/// User names are 3 to 32 characters (ASCII letters, digits, `.`, `_`, `-`, starting with a
/// letter) and unique regardless of case; passwords have at least 10 characters and are not
/// the user name. The password is not stored.
///
/// Returns `NATTER_NAME_TAKEN`, `NATTER_INVALID_USER_NAME`, `NATTER_WEAK_PASSWORD`,
/// `NATTER_THROTTLED`, `NATTER_UPGRADE_REQUIRED`, `NATTER_LOGIN_UNREACHABLE`,
/// `NATTER_LOGIN_FAILED`; `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8` or
/// `NATTER_INVALID_HANDLE` for bad arguments. Safe to call from any thread.
///
/// # Safety
/// `user` and `password` must be NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn natter_client_register(
    client: *mut NatterClient,
    user: *const c_char,
    password: *const c_char,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (user, password) = unsafe { (str_arg(user)?, str_arg(password)?) };
        handle::get(client)?.register(user, password)
    })
}

/// Log `user` in on this device: the login server certifies the device's keys (kept in the
/// data directory). With a certificate stored from an earlier login the password is not
/// needed (pass NULL): the certificate is renewed. Blocks for one or two exchanges with the
/// login server (up to 15 s each): do not call it from a UI thread. While started, the
/// client renews its certificate in the background and sends `NATTER_EVENT_LOGIN_REQUIRED`
/// if that ever needs the password again.
///
/// Logging in again while started is allowed for the same user (the node takes the new
/// certificate); another user gives `NATTER_ALREADY_STARTED`.
///
/// Returns `NATTER_PASSWORD_NEEDED` (password NULL, and no certificate that can be renewed),
/// `NATTER_WRONG_PASSWORD`, `NATTER_UNKNOWN_USER`, `NATTER_INVALID_USER_NAME`,
/// `NATTER_THROTTLED`, `NATTER_REVOKED`, `NATTER_UPGRADE_REQUIRED`,
/// `NATTER_LOGIN_UNREACHABLE`, `NATTER_LOGIN_FAILED`, `NATTER_IO_ERROR` (the data directory);
/// `NATTER_NULL_ARGUMENT` (user NULL), `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. Safe
/// to call from any thread.
///
/// # Safety
/// `user` must be NULL or a NUL-terminated string; `password` NULL or a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn natter_client_login(
    client: *mut NatterClient,
    user: *const c_char,
    password: *const c_char,
) -> NatterResult {
    boundary::result(|| {
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (user, password) = unsafe { (str_arg(user)?, boundary::opt_str_arg(password)?) };
        handle::get(client)?.login(user, password)
    })
}

/// Start the client's node: bind the listen address, find super nodes (events
/// `NATTER_EVENT_ATTACHED`, `NATTER_EVENT_NAT_DETECTED`...), publish the user as online, and
/// accept calls. Returns once the sockets are bound; joining continues in the background
/// (typically tens of milliseconds).
///
/// Returns `NATTER_NOT_LOGGED_IN` before a successful login, `NATTER_ALREADY_STARTED`,
/// `NATTER_IO_ERROR` when the address cannot be bound, `NATTER_NULL_ARGUMENT` or
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_client_start(client: *mut NatterClient) -> NatterResult {
    boundary::result(|| handle::get(client)?.start())
}

/// Stop the client's node: the call (if any) is hung up and ends with
/// `NATTER_END_STOPPED`, the user is published as offline, the super-node cache is saved,
/// and the node's threads and sockets are closed. The client stays logged in and can be
/// started again. Blocks while the node's threads end: usually well under a second, up to
/// 15 s when the login server accepted a background request (a renewal, the revocation list)
/// and stopped answering.
///
/// Returns `NATTER_NOT_STARTED` when not started, `NATTER_NULL_ARGUMENT` or
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread, the event callback included.
#[no_mangle]
pub extern "C" fn natter_client_stop(client: *mut NatterClient) -> NatterResult {
    boundary::result(|| handle::get(client)?.stop())
}

/// Fill `*out_state` with the state of the client's node. Set `out_state->version` to
/// `NATTER_NODE_STATE_VERSION` first.
///
/// Returns `NATTER_NULL_ARGUMENT` when `client` or `out_state` is NULL,
/// `NATTER_UNSUPPORTED_VERSION` for an unknown version (nothing written),
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `out_state` must be NULL or point to a writable `NatterNodeState` whose `version` field
/// is set.
#[no_mangle]
pub unsafe extern "C" fn natter_client_get_state(
    client: *const NatterClient,
    out_state: *mut NatterNodeState,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_state)?;
        // SAFETY: out_state is non-NULL and points to a NatterNodeState whose first field, the
        // version, the caller has set.
        let version = unsafe { std::ptr::addr_of!((*out_state).version).read_unaligned() };
        if version != NATTER_NODE_STATE_VERSION {
            return Err(NatterResult::NatterUnsupportedVersion);
        }
        let s = handle::get(client)?.state();
        let state = NatterNodeState {
            version,
            logged_in: s.logged_in,
            started: s.started,
            super_nodes: s.super_nodes,
            role: s.role,
            nat: s.nat,
            udp_port: s.udp_port,
            events_dropped: s.events_dropped,
        };
        // SAFETY: out_state is non-NULL and holds a version-1 NatterNodeState (checked above,
        // the caller's promise), which is this struct.
        unsafe { boundary::write_out(out_state, state) }
    })
}

/// Describe the client for people (who is logged in, which super nodes it is attached to and
/// how, its NAT, its role) into `buf` (capacity `len` bytes) as a NUL-terminated UTF-8
/// string, and write the string's length without the NUL to `*out_len`. Ask the size by
/// passing `buf == NULL`, then call again with a buffer of `*out_len + 1` bytes. The wording
/// may change between versions: do not parse it.
///
/// Returns `NATTER_BUFFER_TOO_SMALL` when `buf` is NULL or too small (`*out_len` is still
/// written), `NATTER_NULL_ARGUMENT` when `client` or `out_len` is NULL,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread.
///
/// # Safety
/// `buf` must be NULL or valid for `len` bytes of writes; `out_len` NULL or valid for one
/// write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_describe(
    client: *const NatterClient,
    buf: *mut c_char,
    len: usize,
    out_len: *mut usize,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_len)?;
        let text = handle::get(client)?.describe();
        // SAFETY: the caller's guarantees for buf and out_len are passed on.
        unsafe { boundary::copy_str(&text, buf, len, out_len) }
    })
}

/// Search the global index for `user` (is the user known, which devices are online). Returns
/// at once with the search's id in `*out_search`; the outcome arrives as a
/// `NATTER_EVENT_SEARCH_RESULT` with that id (typically within a few hundred milliseconds, at
/// most about 3 s).
///
/// Returns `NATTER_NOT_STARTED`, `NATTER_INVALID_USER_NAME`, `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_UTF8`, `NATTER_INVALID_HANDLE`. `*out_search` is written only on success.
/// Safe to call from any thread.
///
/// # Safety
/// `user` must be NULL or a NUL-terminated string; `out_search` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_search(
    client: *mut NatterClient,
    user: *const c_char,
    out_search: *mut u64,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_search)?;
        // SAFETY: the caller guarantees NULL or a NUL-terminated string.
        let user = unsafe { str_arg(user) }?;
        let id = handle::get(client)?.search(user)?;
        // SAFETY: out_search is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_search, id) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{natter_client_set_event_callback, Event, NatterEvent, NatterEventKind};
    use crate::options::{AudioMode, AudioSettings};
    use std::ffi::c_void;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn offline_client(dir: &std::path::Path) -> *mut NatterClient {
        let network = dir.join("network.toml");
        std::fs::write(
            &network,
            format!(
                "[login]\naddress = \"127.0.0.1:1\"\nserver_name = \"n\"\n\
                 tls_sha256 = \"{}\"\n\n[authority]\nkeys = [\"{}\"]\n",
                "ab".repeat(32),
                "cd".repeat(32)
            ),
        )
        .unwrap();
        let settings = Settings {
            network_file: network,
            data_dir: dir.join("data"),
            listen: "127.0.0.1:0".parse().unwrap(),
            role: natter_overlay::node::RolePolicy::Forbid,
            audio: AudioSettings {
                mode: AudioMode::App,
                complexity: 10,
            },
        };
        handle::insert(Arc::new(Client::new(settings).unwrap()))
    }

    /// What the callbacks below do: the client's handle, and how often they ran.
    struct Ctx {
        client: *mut NatterClient,
        calls: AtomicUsize,
    }

    unsafe extern "C" fn free_own_client(user_data: *mut c_void, _e: *const NatterEvent) {
        // SAFETY: the test passes a Ctx that outlives the client.
        let ctx = unsafe { &*(user_data as *const Ctx) };
        ctx.calls.fetch_add(1, Ordering::SeqCst);
        // Replacing the callback from inside it, then freeing the client, must not deadlock.
        assert_eq!(
            natter_client_set_event_callback(ctx.client, Some(free_own_client), user_data),
            NatterResult::NatterOk
        );
        assert_eq!(natter_client_free(ctx.client), NatterResult::NatterOk);
        assert_eq!(
            natter_client_free(ctx.client),
            NatterResult::NatterInvalidHandle
        );
    }

    #[test]
    fn the_callback_may_free_its_own_client() {
        let dir = tempfile::tempdir().unwrap();
        let client = offline_client(dir.path());
        let ctx = Ctx {
            client,
            calls: AtomicUsize::new(0),
        };
        let events = handle::get(client).unwrap().shared.events.clone();
        let r = natter_client_set_event_callback(
            client,
            Some(free_own_client),
            &ctx as *const Ctx as *mut c_void,
        );
        assert_eq!(r, NatterResult::NatterOk);
        events.push(Event::new(NatterEventKind::NatterEventNoSuperNode));
        events.push(Event::new(NatterEventKind::NatterEventNoSuperNode));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while handle::get(client).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(
            ctx.calls.load(Ordering::SeqCst),
            1,
            "no event after the free"
        );
        assert_eq!(
            handle::get(client).err(),
            Some(NatterResult::NatterInvalidHandle)
        );
    }
}
