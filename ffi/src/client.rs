//! The client object: create and free, register and log in, start and stop, state, search.

use std::ffi::c_char;
use std::sync::Arc;

use natter::{
    BuildError, Filtering, LoginError, NatType, RegisterError, SearchError, ServerError,
    StartError, StopError,
};

use crate::boundary::{self, str_arg};
use crate::handle::{self, NatterClient};
use crate::last_error::{self, Detail};
use crate::options::{AudioMode, NatterOptions, NetworkSource, Settings};
use crate::result::NatterResult;

/// The client behind a `NatterClient` handle: a [`natter::Client`], the audio its calls use,
/// and its events as C takes them.
pub(crate) struct Client {
    pub client: natter::Client,
    pub audio: natter::Audio,
    pub events: Arc<crate::events::Events>,
}

impl Client {
    /// A client with these settings: loads the network file and opens the data directory
    /// (nothing touches the network yet).
    pub fn new(s: Settings) -> Result<Client, NatterResult> {
        crate::log::init(false);
        let network = match &s.network {
            NetworkSource::File(path) => natter::Network::from_file(path),
            NetworkSource::Toml(text) => natter::Network::from_toml_str(text),
        }
        .map_err(|e| {
            tracing::warn!(error = %e, "loading the network file");
            let detail = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(os)
                .unwrap_or_default();
            last_error::record(NatterResult::NatterIoError, &e, detail)
        })?;
        let mut audio_cfg = natter::AudioConfig::default();
        audio_cfg.complexity = s.audio.complexity;
        audio_cfg.voice_processing = s.audio.processing;
        let audio = match s.audio.mode {
            AudioMode::App => natter::Audio::app(),
            AudioMode::Devices { capture, playback } => {
                audio_cfg.input_device = capture;
                audio_cfg.output_device = playback;
                audio_cfg.watch_devices = true;
                natter::Audio::devices()
            }
        };
        let mut builder = natter::Client::builder(network);
        builder = match s.data_dir {
            Some(dir) => builder.data_dir(dir),
            None => builder.without_data_dir(),
        };
        if let Some(c) = s.credentials {
            builder = builder.credentials(c);
        }
        let client = builder
            .listen(s.listen)
            .role(s.role)
            .audio(audio_cfg)
            .build()
            .map_err(|e| {
                tracing::warn!(error = %e, "creating the client");
                let (r, detail) = match &e {
                    BuildError::StunAlternate { .. }
                    | BuildError::FallbackPorts(_)
                    | BuildError::Complexity(_) => {
                        (NatterResult::NatterInvalidArgument, Detail::default())
                    }
                    BuildError::DataDir { source, .. } | BuildError::Events(source) => {
                        (NatterResult::NatterIoError, os(source))
                    }
                    _ => (NatterResult::NatterIoError, Detail::default()),
                };
                last_error::record(r, e, detail)
            })?;
        let events = crate::events::Events::new(client.events().clone());
        Ok(Client {
            client,
            audio,
            events,
        })
    }

    /// Tear the client down (`natter_client_free`): no more callbacks, stop, close the queue,
    /// end the callback thread.
    pub fn close(&self) {
        self.events.close_begin();
        self.client.close();
        self.events.close_end();
    }

    /// The node's state, as C sees it.
    fn state(&self) -> NatterNodeState {
        let s = self.client.state();
        NatterNodeState {
            version: NATTER_NODE_STATE_VERSION,
            logged_in: s.user.is_some(),
            started: s.started,
            super_nodes: u32::try_from(s.super_nodes.len()).unwrap_or(u32::MAX),
            role: match s.role {
                natter::NodeRole::SuperNode => NatterNodeRole::NatterNodeSuperNode,
                _ => NatterNodeRole::NatterNodeClient,
            },
            nat: nat_type(s.nat),
            udp_port: s.local_addr.map_or(0, |a| a.port()),
            events_dropped: s.events_dropped,
        }
    }
}

/// The C form of a NAT type.
pub(crate) fn nat_type(nat: Option<NatType>) -> NatterNatType {
    match nat {
        None => NatterNatType::NatterNatUnknown,
        Some(NatType::Open) => NatterNatType::NatterNatOpen,
        Some(NatType::PublicFiltered(_)) => NatterNatType::NatterNatPublicFiltered,
        Some(NatType::EndpointIndependent(Filtering::EndpointIndependent)) => {
            NatterNatType::NatterNatFullCone
        }
        Some(NatType::EndpointIndependent(Filtering::AddressDependent)) => {
            NatterNatType::NatterNatRestrictedCone
        }
        Some(NatType::EndpointIndependent(Filtering::AddressAndPortDependent)) => {
            NatterNatType::NatterNatPortRestrictedCone
        }
        Some(NatType::Symmetric) => NatterNatType::NatterNatSymmetric,
        Some(NatType::UdpBlocked) => NatterNatType::NatterNatUdpBlocked,
    }
}

pub(crate) fn server_result(e: &ServerError) -> NatterResult {
    match e {
        ServerError::Unreachable { .. } | ServerError::Certificate(_) => {
            NatterResult::NatterLoginUnreachable
        }
        _ => NatterResult::NatterLoginFailed,
    }
}

/// The typed specifics of a login server's refusal or of not reaching it.
pub(crate) fn server_detail(e: &ServerError) -> Detail {
    match e {
        ServerError::Unreachable { source, .. } => Detail {
            os_error: last_error::os_error(source),
            ..Detail::default()
        },
        _ => Detail::default(),
    }
}

/// A wait, for `Detail::retry_after`.
pub(crate) fn wait(retry_after: &std::time::Duration) -> Detail {
    Detail {
        retry_after: Some(*retry_after),
        ..Detail::default()
    }
}

/// A minimum version, for `Detail::minimum_version`.
pub(crate) fn needs(minimum: &natter::Version) -> Detail {
    Detail {
        minimum_version: Some(minimum.to_string()),
        ..Detail::default()
    }
}

/// An I/O error's number, for `Detail::os_error`.
pub(crate) fn os(source: &std::io::Error) -> Detail {
    Detail {
        os_error: last_error::os_error(source),
        ..Detail::default()
    }
}

fn register_result(e: RegisterError) -> NatterResult {
    tracing::warn!(error = %e, "registering");
    let (r, detail) = register_reason(&e);
    last_error::record(r, e, detail)
}

/// The result code and typed details of a registration's failure.
pub(crate) fn register_reason(e: &RegisterError) -> (NatterResult, Detail) {
    match e {
        RegisterError::InvalidName { .. } => {
            (NatterResult::NatterInvalidUserName, Detail::default())
        }
        RegisterError::NameTaken(_) => (NatterResult::NatterNameTaken, Detail::default()),
        RegisterError::WeakPassword => (NatterResult::NatterWeakPassword, Detail::default()),
        RegisterError::Throttled { retry_after } => {
            (NatterResult::NatterThrottled, wait(retry_after))
        }
        RegisterError::UpgradeRequired { minimum } => {
            (NatterResult::NatterUpgradeRequired, needs(minimum))
        }
        RegisterError::Server(s) => (server_result(s), server_detail(s)),
        RegisterError::Io { source, .. } => (NatterResult::NatterIoError, os(source)),
        RegisterError::Closed => (NatterResult::NatterInvalidHandle, Detail::default()),
        RegisterError::Cancelled => (NatterResult::NatterCancelled, Detail::default()),
        _ => (NatterResult::NatterLoginFailed, Detail::default()),
    }
}

fn login_result(e: LoginError) -> NatterResult {
    tracing::warn!(error = %e, "logging in");
    let (r, detail) = login_reason(&e);
    last_error::record(r, e, detail)
}

/// The result code and typed details of a login's failure.
pub(crate) fn login_reason(e: &LoginError) -> (NatterResult, Detail) {
    match e {
        LoginError::InvalidName { .. } => (NatterResult::NatterInvalidUserName, Detail::default()),
        LoginError::WrongPassword => (NatterResult::NatterWrongPassword, Detail::default()),
        LoginError::UnknownUser => (NatterResult::NatterUnknownUser, Detail::default()),
        LoginError::PasswordNeeded(_) => (NatterResult::NatterPasswordNeeded, Detail::default()),
        LoginError::Throttled { retry_after } => (NatterResult::NatterThrottled, wait(retry_after)),
        LoginError::UpgradeRequired { minimum } => {
            (NatterResult::NatterUpgradeRequired, needs(minimum))
        }
        LoginError::Revoked => (NatterResult::NatterRevoked, Detail::default()),
        LoginError::Server(s) => (server_result(s), server_detail(s)),
        LoginError::Io { source, .. } => (NatterResult::NatterIoError, os(source)),
        LoginError::OtherUserRunning { .. } => {
            (NatterResult::NatterAlreadyStarted, Detail::default())
        }
        LoginError::Closed => (NatterResult::NatterInvalidHandle, Detail::default()),
        LoginError::Cancelled => (NatterResult::NatterCancelled, Detail::default()),
        _ => (NatterResult::NatterLoginFailed, Detail::default()),
    }
}

fn start_result(e: StartError) -> NatterResult {
    let r = match &e {
        StartError::NotLoggedIn => NatterResult::NatterNotLoggedIn,
        StartError::AlreadyStarted => NatterResult::NatterAlreadyStarted,
        StartError::Closed => NatterResult::NatterInvalidHandle,
        e => {
            tracing::warn!(error = %e, "starting");
            NatterResult::NatterIoError
        }
    };
    let detail = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(os)
        .unwrap_or_default();
    last_error::record(r, e, detail)
}

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
/// network yet: this reads the network file (or its contents) and creates the data directory
/// (none from options version 3 with `data_dir` NULL: nothing is written to disk). Then
/// register (once per account), log in, and start.
///
/// The client is owned by the caller: free it with `natter_client_free`. `options`, its
/// strings and its credentials bytes are copied and may be freed when this returns.
///
/// Returns `NATTER_NULL_ARGUMENT` when `options`, a required option string (the network file
/// or its contents; the data directory before options version 3) or `out_client` is NULL, or
/// `credentials` is NULL with a length, `NATTER_UNSUPPORTED_VERSION` for an unknown
/// `options->version`, `NATTER_INVALID_ARGUMENT` for a malformed `listen` address, an unknown
/// role or audio mode, a super-node role with port 0, an encoder complexity above 10, both
/// `network_file` and `network_toml`, or `credentials` bytes that are not credentials (none
/// at all included), `NATTER_INVALID_UTF8` for a string that is not UTF-8, `NATTER_IO_ERROR`
/// when the network file cannot be read or parsed (its contents too) or the data directory
/// created (`natter_last_error_message` says which and why).
/// `*out_client` is written only on success. Safe to call from any thread.
///
/// # Safety
/// `options` must be NULL or point to a `NatterOptions` of the version its `version` field
/// states, whose strings are NULL or NUL-terminated and whose `credentials` are NULL or
/// `credentials_len` readable bytes; `out_client` must be NULL or valid for one write.
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
        handle::get(client)?
            .client
            .register(user, password)
            .map_err(register_result)
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
        handle::get(client)?
            .client
            .login(user, password)
            .map(|_| ())
            .map_err(login_result)
    })
}

/// `natter_client_login` without blocking: starts the login in the background, writes its
/// request id (never 0) to `*out_request` and returns at once. Its outcome comes as a
/// `NATTER_EVENT_LOGIN_FINISHED` event with that `request` and a `result` (the code
/// `natter_client_login` would have returned; `NATTER_CANCELLED` after
/// `natter_client_cancel`); on success the client is logged in before the event is queued.
///
/// Returns at once `NATTER_INVALID_USER_NAME`, `NATTER_ALREADY_STARTED` (started as another
/// user), `NATTER_NULL_ARGUMENT` (user or out_request NULL), `NATTER_INVALID_UTF8`,
/// `NATTER_INVALID_HANDLE`, `NATTER_IO_ERROR` (no thread could be started); everything else
/// through the event. Safe to call from any thread, the event callback included.
///
/// # Safety
/// `user` must be NULL or a NUL-terminated string; `password` NULL or a NUL-terminated
/// string; `out_request` NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_login_begin(
    client: *mut NatterClient,
    user: *const c_char,
    password: *const c_char,
    out_request: *mut u64,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_request)?;
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (user, password) = unsafe { (str_arg(user)?, boundary::opt_str_arg(password)?) };
        let id = handle::get(client)?
            .client
            .begin_login(user, password)
            .map_err(login_result)?;
        // SAFETY: out_request is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_request, id.as_u64()) }
    })
}

/// `natter_client_register` without blocking: starts the registration in the background,
/// writes its request id (never 0) to `*out_request` and returns at once. Its outcome comes
/// as a `NATTER_EVENT_REGISTER_FINISHED` event with that `request` and a `result` (the code
/// `natter_client_register` would have returned; `NATTER_CANCELLED` after
/// `natter_client_cancel`).
///
/// Returns at once `NATTER_INVALID_USER_NAME`, `NATTER_NULL_ARGUMENT`, `NATTER_INVALID_UTF8`,
/// `NATTER_INVALID_HANDLE`, `NATTER_IO_ERROR` (no thread could be started); everything else
/// through the event. Safe to call from any thread, the event callback included.
///
/// # Safety
/// `user` and `password` must be NULL or NUL-terminated strings; `out_request` NULL or valid
/// for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_register_begin(
    client: *mut NatterClient,
    user: *const c_char,
    password: *const c_char,
    out_request: *mut u64,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_request)?;
        // SAFETY: the caller guarantees NULL or NUL-terminated strings.
        let (user, password) = unsafe { (str_arg(user)?, str_arg(password)?) };
        let id = handle::get(client)?
            .client
            .begin_register(user, password)
            .map_err(register_result)?;
        // SAFETY: out_request is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_request, id.as_u64()) }
    })
}

/// Cancel a background request (`natter_client_login_begin`,
/// `natter_client_register_begin`): its event comes at once with `result`
/// `NATTER_CANCELLED`, and nothing it would have done happens (a cancelled login logs nobody
/// in). The connection to the login server is dropped within about 20 ms.
///
/// Returns `NATTER_UNKNOWN_REQUEST` when the request is not running (it ended: its event is
/// queued or was delivered; or it never existed), `NATTER_NULL_ARGUMENT`,
/// `NATTER_INVALID_HANDLE`. Safe to call from any thread, the event callback included.
#[no_mangle]
pub extern "C" fn natter_client_cancel(client: *mut NatterClient, request: u64) -> NatterResult {
    boundary::result(|| {
        if handle::get(client)?
            .client
            .cancel_request(natter::RequestId::from_u64(request))
        {
            Ok(())
        } else {
            Err(NatterResult::NatterUnknownRequest)
        }
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
    boundary::result(|| handle::get(client)?.client.start().map_err(start_result))
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
    boundary::result(|| {
        handle::get(client)?
            .client
            .stop()
            .map_err(|_: StopError| NatterResult::NatterNotStarted)
    })
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
        let state = NatterNodeState {
            version,
            ..handle::get(client)?.state()
        };
        // SAFETY: out_state is non-NULL and holds a version-1 NatterNodeState (checked above,
        // the caller's promise), which is this struct.
        unsafe { boundary::write_out(out_state, state) }
    })
}

/// Describe the client for people (who is logged in, which super nodes it is attached to and
/// how, its NAT, its role) into `buf` (capacity `len` bytes) as a NUL-terminated UTF-8
/// string, and write the string's length without the NUL to `*out_len`. Ask the size by
/// passing `buf == NULL`, then call again with a buffer of `*out_len + 1` bytes; the text may
/// grow in between (a super node attaches), so call again while it says
/// `NATTER_BUFFER_TOO_SMALL`, or use `natter_client_describe_copy`, which cannot race. The
/// wording may change between versions: do not parse it.
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
        let text = handle::get(client)?.client.state().to_string();
        // SAFETY: the caller's guarantees for buf and out_len are passed on.
        unsafe { boundary::copy_str(&text, buf, len, out_len) }
    })
}

/// Describe the client for people, as `natter_client_describe` does, into a string the
/// library allocates: one call, so the text cannot grow between asking its size and filling
/// it. Write it to `*out_text`; free it with `natter_string_free`. The wording may change
/// between versions: do not parse it.
///
/// Returns `NATTER_NULL_ARGUMENT` when `client` or `out_text` is NULL, `NATTER_INVALID_HANDLE`.
/// `*out_text` is written only on success. Safe to call from any thread.
///
/// # Safety
/// `out_text` must be NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn natter_client_describe_copy(
    client: *const NatterClient,
    out_text: *mut *mut c_char,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out_text)?;
        let text = handle::get(client)?.client.state().to_string();
        let owned = std::ffi::CString::new(text.replace('\0', " ")).unwrap_or_default();
        // Kept here until natter_string_free: an unknown or twice-freed pointer is an error,
        // and bytes the application changed do not matter when it is dropped.
        let p = owned.as_ptr().cast_mut();
        boundary::lock(&STRINGS).insert(p.addr(), owned);
        // SAFETY: out_text is non-NULL (checked) and valid for one write (the caller's
        // promise).
        unsafe { boundary::write_out(out_text, p) }
    })
}

/// Strings handed to the application and not freed yet, by address.
static STRINGS: std::sync::Mutex<std::collections::BTreeMap<usize, std::ffi::CString>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Free a string the library allocated (`natter_client_describe_copy`); the application may
/// have changed its bytes, not written past its end. NULL does nothing.
///
/// Returns `NATTER_OK`, or `NATTER_INVALID_HANDLE` for a pointer that is not such a string
/// (freed already, or anything else), which is left alone. Safe to call from any thread.
#[no_mangle]
pub extern "C" fn natter_string_free(text: *mut c_char) -> NatterResult {
    boundary::result(|| {
        if text.is_null() {
            return Ok(());
        }
        match boundary::lock(&STRINGS).remove(&text.addr()) {
            Some(owned) => {
                drop(owned);
                Ok(())
            }
            None => Err(NatterResult::NatterInvalidHandle),
        }
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
        let id = handle::get(client)?
            .client
            .search(user)
            .map_err(|e| match e {
                SearchError::InvalidName { .. } => NatterResult::NatterInvalidUserName,
                _ => NatterResult::NatterNotStarted,
            })?
            .as_u64();
        // SAFETY: out_search is non-NULL (checked) and valid for one write (caller's promise).
        unsafe { boundary::write_out(out_search, id) }
    })
}
