//! The exported functions called from Rust as C would call them: NULL pointers, made-up and
//! freed handles, unknown calls and bad options give their documented results (the same
//! checks, and more, run from C under valgrind in `c_programs.rs`).

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use natter_ffi::account::*;
use natter_ffi::audio::*;
use natter_ffi::call::*;
use natter_ffi::client::*;
use natter_ffi::events::*;
use natter_ffi::handle::NatterClient;
use natter_ffi::options::*;
use natter_ffi::NatterResult::{self, *};

fn offline_network(dir: &std::path::Path) -> CString {
    let path = dir.join("network.toml");
    std::fs::write(
        &path,
        format!(
            "[login]\naddress = \"127.0.0.1:1\"\nserver_name = \"natter-login\"\n\
             tls_sha256 = \"{}\"\n\n[authority]\nkeys = [\"{}\"]\n",
            "ab".repeat(32),
            "cd".repeat(32)
        ),
    )
    .unwrap();
    CString::new(path.to_str().unwrap()).unwrap()
}

/// Default (version 1) options for an offline network in `dir`, with the strings they point
/// to: keep those alive as long as the options are used.
fn offline_options(dir: &std::path::Path) -> (NatterOptions, [CString; 2]) {
    let net = offline_network(dir);
    let data = CString::new(dir.join("data").to_str().unwrap()).unwrap();
    let mut o = std::mem::MaybeUninit::<NatterOptions>::uninit();
    // SAFETY: o has room for a version-1 NatterOptions.
    assert_eq!(
        unsafe { natter_options_default(o.as_mut_ptr(), 1) },
        NatterOk
    );
    // SAFETY: natter_options_default filled it.
    let mut o = unsafe { o.assume_init() };
    // A CString's bytes stay where they are when it moves: these pointers remain valid.
    o.network_file = net.as_ptr();
    o.data_dir = data.as_ptr();
    (o, [net, data])
}

/// Every function taking a client, with `c`; each must give `want`.
fn all_with(c: *mut NatterClient, want: NatterResult) {
    let user = c"alice".as_ptr();
    let pw = c"a good password".as_ptr();
    let mut st = NatterNodeState {
        version: NATTER_NODE_STATE_VERSION,
        logged_in: false,
        started: false,
        super_nodes: 0,
        role: NatterNodeRole::NatterNodeClient,
        nat: NatterNatType::NatterNatUnknown,
        udp_port: 0,
        events_dropped: 0,
    };
    let mut cs = NatterCallStats {
        version: NATTER_CALL_STATS_VERSION,
        state: NatterCallState::NatterCallEnded,
        end_reason: 0,
        muted: false,
        local_hold: false,
        remote_hold: false,
        path: NatterPathKind::NatterPathNone,
        duration_ms: 0,
        rtt_ms: 0.0,
        loss_in: 0.0,
        loss_out: 0.0,
        jitter_ms: 0.0,
        frames_sent: 0,
        frames_received: 0,
        bytes_sent: 0,
        concealed_ms: 0.0,
        jitter_buffer_ms: 0.0,
        mos: 0.0,
        voice_processing: 0,
        echo_erle_db: 0.0,
    };
    let (mut id, mut fd, mut len) = (0u64, -1, 0usize);
    let mut ev: *mut NatterEvent = null_mut();
    let mut buf = [0 as c_char; 64];
    let mut pcm = [0i16; 320];
    let mut devices = [NatterAccountDevice {
        id: [0; 16],
        id_text: [0; 13],
        first_seen: 0,
        last_seen: 0,
        revoked_at: 0,
        this_device: false,
    }; 2];
    // SAFETY: every pointer passed is NULL or valid for what the function reads or writes.
    unsafe {
        assert_eq!(natter_client_register(c, user, pw), want);
        assert_eq!(natter_client_login(c, user, pw), want);
        assert_eq!(natter_client_start(c), want);
        assert_eq!(natter_client_stop(c), want);
        assert_eq!(natter_client_get_state(c, &mut st), want);
        assert_eq!(
            natter_client_describe(c, buf.as_mut_ptr(), 64, &mut len),
            want
        );
        assert_eq!(natter_client_search(c, user, &mut id), want);
        assert_eq!(natter_client_event_fd(c, &mut fd), want);
        assert_eq!(natter_client_next_event(c, &mut ev), want);
        assert_eq!(natter_client_wait_event(c, 5, &mut ev), want);
        assert_eq!(natter_client_set_event_callback(c, None, null_mut()), want);
        assert_eq!(natter_call_start(c, user, &mut id), want);
        assert_eq!(natter_call_answer(c, 1), want);
        assert_eq!(natter_call_decline(c, 1), want);
        assert_eq!(natter_call_hang_up(c, 1), want);
        assert_eq!(natter_call_hold(c, 1), want);
        assert_eq!(natter_call_resume(c, 1), want);
        assert_eq!(natter_call_set_muted(c, 1, true), want);
        assert_eq!(natter_call_set_voice_processing(c, 1, 0), want);
        assert_eq!(natter_call_get_stats(c, 1, &mut cs), want);
        assert_eq!(natter_call_push_audio(c, 1, pcm.as_ptr(), 320), want);
        assert_eq!(
            natter_call_pull_audio(c, 1, pcm.as_mut_ptr(), 320, &mut len),
            want
        );
        assert_eq!(
            natter_client_devices(c, devices.as_mut_ptr(), 2, &mut len),
            want
        );
        assert_eq!(natter_client_revoke_device(c, [7u8; 16].as_ptr(), pw), want);
        assert_eq!(natter_client_change_password(c, pw, pw, true), want);
    }
    assert_eq!((id, fd, len), (0, -1, 0), "outputs written on failure");
    assert!(ev.is_null());
}

#[test]
fn null_made_up_and_freed_handles_are_errors() {
    all_with(null_mut(), NatterNullArgument);
    all_with(
        std::ptr::without_provenance_mut(0x1234_5678),
        NatterInvalidHandle,
    );
    all_with(
        std::ptr::without_provenance_mut(usize::MAX),
        NatterInvalidHandle,
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _strings) = offline_options(dir.path());
    o.listen = c"127.0.0.1:0".as_ptr();
    o.audio = NatterAudioMode::NatterAudioApp as u32;
    let mut c: *mut NatterClient = null_mut();
    // SAFETY: o and c are valid.
    assert_eq!(unsafe { natter_client_new(&o, &mut c) }, NatterOk);
    assert_eq!(natter_client_free(c), NatterOk);
    all_with(c, NatterInvalidHandle);
    assert_eq!(natter_client_free(c), NatterInvalidHandle);
    assert_eq!(natter_client_free(null_mut()), NatterOk);
}

#[test]
fn options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let net = offline_network(dir.path());
    let data = CString::new(dir.path().join("data").to_str().unwrap()).unwrap();
    let mut o = std::mem::MaybeUninit::<NatterOptions>::uninit();
    // SAFETY: NULL and a valid pointer with unknown versions.
    unsafe {
        assert_eq!(natter_options_default(null_mut(), 1), NatterNullArgument);
        assert_eq!(
            natter_options_default(o.as_mut_ptr(), NATTER_OPTIONS_VERSION + 1),
            NatterUnsupportedVersion
        );
        assert_eq!(
            natter_options_default(o.as_mut_ptr(), NATTER_OPTIONS_VERSION),
            NatterOk
        );
    }
    // SAFETY: filled above.
    let good = {
        let mut o = unsafe { o.assume_init() };
        o.network_file = net.as_ptr();
        o.data_dir = data.as_ptr();
        o
    };
    let try_new = |o: &NatterOptions| {
        let mut c: *mut NatterClient = null_mut();
        // SAFETY: o's strings are NULL or live CStrings; c is a valid out pointer.
        let r = unsafe { natter_client_new(o, &mut c) };
        assert_eq!(r == NatterOk, !c.is_null());
        assert_eq!(natter_client_free(c), NatterOk);
        r
    };
    let bad = c"\xff\xfe".as_ptr();
    type Change = Box<dyn Fn(&mut NatterOptions)>;
    let cases: Vec<(Change, NatterResult)> = vec![
        (Box::new(|o| o.network_file = null()), NatterNullArgument),
        (
            Box::new(|o| o.network_toml = c"[login]".as_ptr()),
            NatterInvalidArgument,
        ),
        // From options version 3 no data directory means nothing on disk; before, it is
        // required.
        (Box::new(|o| o.data_dir = null()), NatterOk),
        (
            Box::new(|o| {
                o.data_dir = null();
                o.version = 2;
            }),
            NatterNullArgument,
        ),
        (Box::new(|o| o.version = 0), NatterUnsupportedVersion),
        (
            Box::new(|o| o.listen = c"nowhere".as_ptr()),
            NatterInvalidArgument,
        ),
        (Box::new(|o| o.role = 3), NatterInvalidArgument),
        (
            Box::new(|o| o.role = NatterRole::NatterRoleAuto as u32),
            NatterInvalidArgument,
        ),
        (Box::new(|o| o.audio = 2), NatterInvalidArgument),
        (
            Box::new(|o| o.encoder_complexity = 11),
            NatterInvalidArgument,
        ),
        (Box::new(move |o| o.data_dir = bad), NatterInvalidUtf8),
        (
            Box::new(|o| o.network_file = c"/nonexistent/network.toml".as_ptr()),
            NatterIoError,
        ),
        (
            Box::new(|o| {
                o.role = NatterRole::NatterRoleSuperNode as u32;
                o.listen = c"127.0.0.1:4999".as_ptr();
            }),
            NatterOk,
        ),
        (Box::new(|_| {}), NatterOk),
    ];
    for (i, (change, want)) in cases.iter().enumerate() {
        let mut o = good;
        change(&mut o);
        assert_eq!(try_new(&o), *want, "case {i}");
    }
    let mut c: *mut NatterClient = null_mut();
    // SAFETY: NULL options and out pointer.
    unsafe {
        assert_eq!(natter_client_new(null(), &mut c), NatterNullArgument);
        assert_eq!(natter_client_new(&good, null_mut()), NatterNullArgument);
    }
}

#[test]
fn a_client_that_is_not_logged_in_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _strings) = offline_options(dir.path());
    let mut c: *mut NatterClient = null_mut();
    let mut id = 0u64;
    let mut ev: *mut NatterEvent = null_mut();
    let mut len = 0usize;
    // SAFETY: every pointer is valid; strings are C string literals.
    unsafe {
        assert_eq!(natter_client_new(&o, &mut c), NatterOk);
        assert_eq!(
            natter_client_login(c, c"alice".as_ptr(), null()),
            NatterPasswordNeeded
        );
        assert_eq!(
            natter_client_login(c, c"alice".as_ptr(), c"a good password".as_ptr()),
            NatterLoginUnreachable
        );
        assert_eq!(
            natter_client_login(c, c"1x".as_ptr(), null()),
            NatterInvalidUserName
        );
        assert_eq!(natter_client_start(c), NatterNotLoggedIn);
        assert_eq!(natter_client_stop(c), NatterNotStarted);
        assert_eq!(
            natter_call_start(c, c"bob".as_ptr(), &mut id),
            NatterNotStarted
        );
        assert_eq!(natter_call_set_muted(c, 1, true), NatterUnknownCall);
        assert_eq!(natter_client_next_event(c, &mut ev), NatterNoEvent);
        assert!(ev.is_null());
        assert_eq!(
            natter_client_describe(c, null_mut(), 0, &mut len),
            NatterBufferTooSmall
        );
        let mut buf = vec![0 as c_char; len + 1];
        assert_eq!(
            natter_client_describe(c, buf.as_mut_ptr(), buf.len(), &mut len),
            NatterOk
        );
        let text = CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
        assert_eq!(text, "not logged in; not started");
        assert_eq!(natter_client_free(c), NatterOk);
    }
    assert_eq!(id, 0);
    assert_eq!(natter_audio_sample_rate(), 16_000);
    assert_eq!(natter_audio_frame_samples(), 320);
}

/// What the callback below does: the client's handle, and how often it ran.
struct Ctx {
    client: *mut NatterClient,
    calls: std::sync::atomic::AtomicUsize,
}

unsafe extern "C" fn free_own_client(user_data: *mut std::ffi::c_void, _e: *const NatterEvent) {
    // SAFETY: the test passes a Ctx that outlives the client.
    let ctx = unsafe { &*(user_data as *const Ctx) };
    ctx.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // Replacing the callback from inside it, then freeing the client, must not deadlock.
    assert_eq!(
        natter_client_set_event_callback(ctx.client, Some(free_own_client), user_data),
        NatterOk
    );
    assert_eq!(natter_client_free(ctx.client), NatterOk);
    assert_eq!(natter_client_free(ctx.client), NatterInvalidHandle);
}

#[test]
fn the_callback_may_free_its_own_client() {
    let net = natter_fixtures::TestNet::start();
    let dir = tempfile::tempdir().unwrap();
    let network = CString::new(net.network_path().to_str().unwrap()).unwrap();
    let data = CString::new(dir.path().join("data").to_str().unwrap()).unwrap();
    let password = CString::new(natter_fixtures::PASSWORD).unwrap();
    let mut o = std::mem::MaybeUninit::<NatterOptions>::uninit();
    let mut c: *mut NatterClient = null_mut();
    // SAFETY: o has room for a version-1 NatterOptions, which natter_options_default fills;
    // the strings are live CStrings and literals; c is a valid out pointer.
    unsafe {
        assert_eq!(natter_options_default(o.as_mut_ptr(), 1), NatterOk);
        let mut o = o.assume_init();
        o.network_file = network.as_ptr();
        o.data_dir = data.as_ptr();
        o.listen = c"127.0.0.1:0".as_ptr();
        o.audio = NatterAudioMode::NatterAudioApp as u32;
        assert_eq!(natter_client_new(&o, &mut c), NatterOk);
        assert_eq!(
            natter_client_register(c, c"carol".as_ptr(), password.as_ptr()),
            NatterOk
        );
        assert_eq!(
            natter_client_login(c, c"carol".as_ptr(), password.as_ptr()),
            NatterOk
        );
    }
    let ctx = Ctx {
        client: c,
        calls: std::sync::atomic::AtomicUsize::new(0),
    };
    let r = natter_client_set_event_callback(
        c,
        Some(free_own_client),
        &ctx as *const Ctx as *mut std::ffi::c_void,
    );
    assert_eq!(r, NatterOk);
    // Joining the network brings events; the first one frees the client.
    assert_eq!(natter_client_start(c), NatterOk);
    let mut st = NatterNodeState {
        version: NATTER_NODE_STATE_VERSION,
        logged_in: false,
        started: false,
        super_nodes: 0,
        role: NatterNodeRole::NatterNodeClient,
        nat: NatterNatType::NatterNatUnknown,
        udp_port: 0,
        events_dropped: 0,
    };
    assert!(natter_fixtures::poll_until(
        natter_fixtures::DEADLINE,
        || {
            // SAFETY: st is a valid NatterNodeState with its version set.
            unsafe { natter_client_get_state(c, &mut st) == NatterInvalidHandle }
        }
    ));
    assert_eq!(ctx.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
