//! Client options: a versioned struct the application fills, starting from defaults.

use std::ffi::c_char;
use std::net::SocketAddr;
use std::path::PathBuf;

use natter::Role;

use crate::boundary::{self, opt_str_arg};
use crate::result::NatterResult;

/// The version of `NatterOptions` this header describes. Pass it to `natter_options_default`.
pub const NATTER_OPTIONS_VERSION: u32 = 3;

/// Whether a client's node may become a super node (`NatterOptions::role`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterRole {
    /// Never a super node: apps on phones, laptops, anything behind a NAT or on a battery.
    /// The default; the only role that may listen on an ephemeral port (port 0).
    NatterRoleClient = 0,
    /// Become a super node when measured suitable (a public address reachable unsolicited,
    /// two minutes up, spare CPU). Needs a fixed listen port.
    NatterRoleAuto = 1,
    /// Always a super node (operators' bootstrap nodes). Needs a fixed listen port.
    NatterRoleSuperNode = 2,
}

/// Where a client's call audio comes from and goes to (`NatterOptions::audio`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatterAudioMode {
    /// The system's microphone and speaker (default devices unless
    /// `NatterOptions::capture_device` / `playback_device` name others). The default.
    NatterAudioDevices = 0,
    /// The application owns audio: it pushes captured samples with `natter_call_push_audio`
    /// and pulls samples to play with `natter_call_pull_audio` (mono, 16-bit, at
    /// `natter_audio_sample_rate()`), from its own audio callback or loop.
    NatterAudioApp = 1,
}

/// Options of `natter_client_new`. Fill it with `natter_options_default`, then set what you
/// need; the strings are copied by `natter_client_new` (the struct may be freed afterwards).
///
/// `version` says which fields exist: the library reads only those, so an application built
/// against an older header keeps working with a newer library. Fields are only ever added at
/// the end, with a new version number.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NatterOptions {
    /// `NATTER_OPTIONS_VERSION` of the header the application was built with (set by
    /// `natter_options_default`).
    pub version: u32,
    /// Path of the network file from the login server (`network.toml`). This or
    /// `network_toml` (version 2) is required.
    pub network_file: *const c_char,
    /// The device's data directory: its keys, its certificate and the super-node cache
    /// (created with mode 0700; the same layout as `natter node --data`). Required in
    /// versions 1 and 2. From version 3, NULL means nothing is written to disk: the keys and
    /// certificate stay in memory (new keys unless `credentials` gives them; export them with
    /// `natter_client_export_credentials`), and so does the super-node cache.
    pub data_dir: *const c_char,
    /// UDP (and, for super nodes, TCP) address to listen on, `IP:PORT`. NULL: `0.0.0.0:0`,
    /// any address and a port chosen by the system.
    pub listen: *const c_char,
    /// A `NatterRole`. Default `NATTER_ROLE_CLIENT`.
    pub role: u32,
    /// A `NatterAudioMode`. Default `NATTER_AUDIO_DEVICES`.
    pub audio: u32,
    /// With `NATTER_AUDIO_DEVICES`: the microphone's name, NULL for the default one.
    pub capture_device: *const c_char,
    /// With `NATTER_AUDIO_DEVICES`: the speaker's name, NULL for the default one.
    pub playback_device: *const c_char,
    /// Opus encoder complexity, 0 (least CPU) to 10 (best quality per bit). Default 10; lower
    /// it on slow devices (or under a memory checker, which slows code ~50 times).
    pub encoder_complexity: u32,
    /// (Version 2.) The network file's contents, for an application that ships it inside
    /// itself or keeps it in its own storage: used instead of `network_file`, which must then
    /// be NULL. Default NULL.
    pub network_toml: *const c_char,
    /// (Version 3.) The device's credentials as `natter_client_export_credentials` wrote
    /// them (from the platform's keychain, say), `credentials_len` bytes; NULL for none.
    /// They are kept in memory and never written to disk (`data_dir`, if set, then holds only
    /// the super-node cache). Bytes that are not credentials give `NATTER_INVALID_ARGUMENT`.
    /// Default NULL.
    pub credentials: *const u8,
    /// (Version 3.) The length of `credentials`. Default 0.
    pub credentials_len: usize,
    /// (Version 3.) Echo cancellation, noise suppression and gain control of captured audio
    /// in every call: `NATTER_VOICE_*` flags (0: none), or `NATTER_VOICE_PROCESSING_AUTO`
    /// (the default): all three with `NATTER_AUDIO_DEVICES` (none while the microphone
    /// cannot be opened), none with `NATTER_AUDIO_APP` (turn them on when your audio has not
    /// been processed). A call can change its own
    /// with `natter_call_set_voice_processing`.
    pub voice_processing: u32,
}

/// The second version of [`NatterOptions`].
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct OptionsV2 {
    version: u32,
    network_file: *const c_char,
    data_dir: *const c_char,
    listen: *const c_char,
    role: u32,
    audio: u32,
    capture_device: *const c_char,
    playback_device: *const c_char,
    encoder_complexity: u32,
    network_toml: *const c_char,
}

impl From<OptionsV2> for NatterOptions {
    fn from(o: OptionsV2) -> Self {
        NatterOptions {
            version: o.version,
            network_file: o.network_file,
            data_dir: o.data_dir,
            listen: o.listen,
            role: o.role,
            audio: o.audio,
            capture_device: o.capture_device,
            playback_device: o.playback_device,
            encoder_complexity: o.encoder_complexity,
            network_toml: o.network_toml,
            credentials: std::ptr::null(),
            credentials_len: 0,
            voice_processing: crate::call::NATTER_VOICE_PROCESSING_AUTO,
        }
    }
}

/// The first version of [`NatterOptions`], as applications built against it pass it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct OptionsV1 {
    version: u32,
    network_file: *const c_char,
    data_dir: *const c_char,
    listen: *const c_char,
    role: u32,
    audio: u32,
    capture_device: *const c_char,
    playback_device: *const c_char,
    encoder_complexity: u32,
}

impl From<OptionsV1> for OptionsV2 {
    fn from(o: OptionsV1) -> Self {
        OptionsV2 {
            version: o.version,
            network_file: o.network_file,
            data_dir: o.data_dir,
            listen: o.listen,
            role: o.role,
            audio: o.audio,
            capture_device: o.capture_device,
            playback_device: o.playback_device,
            encoder_complexity: o.encoder_complexity,
            network_toml: std::ptr::null(),
        }
    }
}

impl From<OptionsV1> for NatterOptions {
    fn from(o: OptionsV1) -> Self {
        NatterOptions::from(OptionsV2::from(o))
    }
}

/// Fill `*out` with the defaults for options version `version` (pass
/// `NATTER_OPTIONS_VERSION`, or 1 or 2 for the older structs): no network file or contents
/// (one of them is required), no data directory (required before version 3; from version 3,
/// none means nothing on disk) and no credentials, listen on `0.0.0.0:0`, role
/// `NATTER_ROLE_CLIENT`, audio `NATTER_AUDIO_DEVICES` on the default devices, encoder
/// complexity 10, voice processing `NATTER_VOICE_PROCESSING_AUTO`. Only the fields of that
/// version are written.
///
/// Returns `NATTER_NULL_ARGUMENT` when `out` is NULL, `NATTER_UNSUPPORTED_VERSION` when this
/// library does not know `version` (`*out` is then untouched). Safe to call from any thread.
///
/// # Safety
/// `out` must be NULL or point to writable memory holding a `NatterOptions` of version
/// `version`.
#[no_mangle]
pub unsafe extern "C" fn natter_options_default(
    out: *mut NatterOptions,
    version: u32,
) -> NatterResult {
    boundary::result(|| {
        boundary::check_out(out)?;
        let v1 = OptionsV1 {
            version,
            network_file: std::ptr::null(),
            data_dir: std::ptr::null(),
            listen: std::ptr::null(),
            role: NatterRole::NatterRoleClient as u32,
            audio: NatterAudioMode::NatterAudioDevices as u32,
            capture_device: std::ptr::null(),
            playback_device: std::ptr::null(),
            encoder_complexity: 10,
        };
        match version {
            // SAFETY: out is non-NULL and holds a version-1 NatterOptions (the caller's
            // promise), whose layout OptionsV1 is.
            1 => unsafe { boundary::write_out(out.cast::<OptionsV1>(), v1) },
            // SAFETY: out is non-NULL and holds a version-2 NatterOptions (the caller's
            // promise), whose layout OptionsV2 is.
            2 => unsafe { boundary::write_out(out.cast::<OptionsV2>(), OptionsV2::from(v1)) },
            // SAFETY: out is non-NULL and holds a version-3 NatterOptions (the caller's
            // promise), which is this struct.
            3 => unsafe { boundary::write_out(out, NatterOptions::from(v1)) },
            _ => Err(NatterResult::NatterUnsupportedVersion),
        }
    })
}

/// Where a call's audio goes, as the engine uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AudioMode {
    /// Devices by name (`None`: the default one).
    Devices {
        capture: Option<String>,
        playback: Option<String>,
    },
    /// Pushed and pulled by the application.
    App,
}

/// How calls' audio is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AudioSettings {
    pub mode: AudioMode,
    /// Opus encoder complexity (0 to 10).
    pub complexity: u8,
    /// Voice processing of every call (`None`: each call's audio decides).
    pub processing: Option<natter::VoiceProcessing>,
}

/// Where the network description comes from.
#[derive(Debug, Clone)]
pub(crate) enum NetworkSource {
    /// A file.
    File(PathBuf),
    /// The file's contents.
    Toml(String),
}

/// Checked options.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub network: NetworkSource,
    /// None: nothing on disk (version 3).
    pub data_dir: Option<PathBuf>,
    /// Imported credentials.
    pub credentials: Option<natter::Credentials>,
    pub listen: SocketAddr,
    pub role: Role,
    pub audio: AudioSettings,
}

impl Settings {
    /// Read and check the options at `p` (version 1, 2 or 3).
    ///
    /// # Safety
    /// `p` must be NULL or point to a readable `NatterOptions` of the version its first field
    /// states, whose strings are NULL or NUL-terminated and valid for the call.
    pub unsafe fn read(p: *const NatterOptions) -> Result<Settings, NatterResult> {
        if p.is_null() {
            return Err(NatterResult::NatterNullArgument);
        }
        // SAFETY: p is non-NULL and points to at least the version field (every version has
        // it first); read_unaligned makes no alignment assumption.
        let version = unsafe { std::ptr::addr_of!((*p).version).read_unaligned() };
        let o: NatterOptions = match version {
            // SAFETY: a version-1 struct has OptionsV1's layout (the caller's promise); every
            // field is a pointer or an integer, valid for any bit pattern.
            1 => unsafe { p.cast::<OptionsV1>().read_unaligned() }.into(),
            // SAFETY: a version-2 struct has OptionsV2's layout (the caller's promise).
            2 => unsafe { p.cast::<OptionsV2>().read_unaligned() }.into(),
            // SAFETY: a version-3 struct is this whole struct (the caller's promise).
            3 => unsafe { p.read_unaligned() },
            _ => return Err(NatterResult::NatterUnsupportedVersion),
        };
        // SAFETY: the caller promises NULL or valid NUL-terminated strings (these two and the
        // ones below), which are copied before returning.
        let network = match unsafe { (opt_str_arg(o.network_file)?, opt_str_arg(o.network_toml)?) }
        {
            (Some(path), None) => NetworkSource::File(PathBuf::from(path)),
            (None, Some(toml)) => NetworkSource::Toml(toml.to_string()),
            (None, None) => return Err(NatterResult::NatterNullArgument),
            (Some(_), Some(_)) => return Err(NatterResult::NatterInvalidArgument),
        };
        // SAFETY: as above.
        let data_dir = match unsafe { opt_str_arg(o.data_dir) }? {
            Some(d) => Some(PathBuf::from(d)),
            None if version >= 3 => None,
            None => return Err(NatterResult::NatterNullArgument),
        };
        // SAFETY: the caller promises credentials_len readable bytes at credentials (or
        // NULL), valid for the call; they are decoded (copied) before returning.
        let bytes = unsafe { boundary::slice_arg(o.credentials, o.credentials_len) }?;
        let credentials = if o.credentials.is_null() {
            None
        } else {
            Some(natter::Credentials::from_bytes(bytes).map_err(|e| {
                crate::last_error::record(
                    NatterResult::NatterInvalidArgument,
                    format!("credentials: {e}"),
                    crate::last_error::Detail::default(),
                )
            })?)
        };
        // SAFETY: as above.
        let listen = match unsafe { opt_str_arg(o.listen) }? {
            None => SocketAddr::from(([0, 0, 0, 0], 0)),
            Some(s) => s.parse().map_err(|_| NatterResult::NatterInvalidArgument)?,
        };
        let role = match o.role {
            0 => Role::Client,
            1 => Role::Auto,
            2 => Role::SuperNode,
            _ => return Err(NatterResult::NatterInvalidArgument),
        };
        if role != Role::Client && listen.port() == 0 {
            return Err(NatterResult::NatterInvalidArgument);
        }
        let mode = match o.audio {
            0 => AudioMode::Devices {
                // SAFETY: as above.
                capture: unsafe { opt_str_arg(o.capture_device) }?.map(str::to_owned),
                // SAFETY: as above.
                playback: unsafe { opt_str_arg(o.playback_device) }?.map(str::to_owned),
            },
            1 => AudioMode::App,
            _ => return Err(NatterResult::NatterInvalidArgument),
        };
        let complexity = u8::try_from(o.encoder_complexity)
            .ok()
            .filter(|c| *c <= 10)
            .ok_or(NatterResult::NatterInvalidArgument)?;
        let processing = crate::call::voice_processing(o.voice_processing)?;
        let audio = AudioSettings {
            mode,
            complexity,
            processing,
        };
        Ok(Settings {
            network,
            data_dir,
            credentials,
            listen,
            role,
            audio,
        })
    }
}
