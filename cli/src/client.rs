//! `natter client`: an ordinary node that makes and takes calls.
//!
//! Commands come one per line on standard input (`call USER`, `answer`, `decline`, `hangup`,
//! `hold`, `resume`, `search USER`, `status`, `quit`) or from flags for scripted runs
//! (`--call USER`, `--auto-answer`, `--hangup-after SECS`, `--exit-after-call`). While a call
//! is connected the client sends a 440 Hz test tone encoded with Opus (50 frames a second),
//! counts the frames it receives, and prints the call's path whenever it changes and its
//! quality every second. Results go to standard output, one line each; logs to standard error.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::Instant;

use natter::{
    Audio, AudioConfig, AudioError, AudioInput, AudioOutput, Call, CallId, EndReason, Event, Found,
    PathReason, Role, VoiceProcessing,
};
use serde_json::json;

use crate::node::{NodeArgs, Running};

/// Options of `natter client`.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Call this user once joined.
    #[arg(long, value_name = "USER")]
    call: Option<String>,
    /// Answer incoming calls at once.
    #[arg(long)]
    auto_answer: bool,
    /// Hang up this many seconds after the call connected.
    #[arg(long, value_name = "SECS")]
    hangup_after: Option<f64>,
    /// Exit when the first call ends (0 if it was connected, 1 if not).
    #[arg(long)]
    exit_after_call: bool,
    /// Give up (exit 1) if no call connected within this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Send this WAV file (16 kHz mono) in calls instead of the microphone.
    #[arg(long, value_name = "WAV")]
    audio_in: Option<std::path::PathBuf>,
    /// Save what the other side sends in a call to this WAV file instead of playing it.
    #[arg(long, value_name = "WAV")]
    audio_out: Option<std::path::PathBuf>,
    /// Use no audio device: send a 440 Hz test tone (unless --audio-in) and drop what arrives
    /// (unless --audio-out). Without a device this is what happens anyway.
    #[arg(long)]
    no_devices: bool,
    /// Voice processing of captured audio in calls: `auto` (the default: echo cancellation,
    /// noise suppression and gain control with the microphone and speaker, noise suppression
    /// and gain control with the microphone alone, none with a WAV file or a tone), `off`, or a
    /// comma-separated list of `echo`, `noise`, `gain`.
    #[arg(long, value_name = "STAGES", value_parser = parse_stages, default_value = "auto")]
    voice_processing: Stages,
    /// Report audio devices plugged in and out while running (`audio_devices_changed`).
    #[arg(long)]
    watch_audio_devices: bool,
    /// Be driven by a program: one JSON command per line on standard input, one JSON event
    /// per line on standard output (see docs/json-api.md); logs stay on standard error.
    #[arg(long)]
    json: bool,
}

impl ClientArgs {
    /// The calls' audio: the WAV file or the microphone (a 440 Hz tone without one, or
    /// with --no-devices) in; the WAV file or the speaker (nowhere without one) out.
    fn audio(&self) -> Audio {
        let input = match (&self.audio_in, self.no_devices) {
            (Some(p), _) => AudioInput::Wav(p.clone()),
            (None, false) => AudioInput::Device(None),
            (None, true) => AudioInput::Tone,
        };
        let output = match (&self.audio_out, self.no_devices) {
            (Some(p), _) => AudioOutput::Wav(p.clone()),
            (None, false) => AudioOutput::Device(None),
            (None, true) => AudioOutput::Discard,
        };
        Audio::new(input, output)
    }
}

/// What the current call is doing, as the client follows it.
struct CallView {
    call: Call,
    connected: Option<Instant>,
}

/// Run the client; returns the exit code.
pub fn run(args: ClientArgs) -> i32 {
    let outcome = run_inner(args);
    // However it ended, a password prompt does not leave the terminal without echo.
    echo(true);
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natter client: {e}");
            1
        }
    }
}

fn run_inner(args: ClientArgs) -> Result<i32, String> {
    if let Some(u) = &args.call {
        natter::UserName::parse(u).map_err(|e| format!("--call {u}: {e}"))?;
    }
    let mut dial = args.call.clone();
    if args.json {
        crate::set_json_mode();
    }
    let mut audio_cfg = AudioConfig::default();
    audio_cfg.tone_without_microphone = true;
    // Report audio devices plugged in and out (lists them every 3 s; where there is no sound
    // card ALSA complains on standard error at each listing, hence a flag).
    audio_cfg.watch_devices = args.watch_audio_devices;
    audio_cfg.voice_processing = args.voice_processing.0;
    let node = match Running::start(&args.node, Some((Role::Client, audio_cfg))) {
        Ok(n) => n,
        Err(e) => {
            report!(
                json!({"event": "error", "message": e}),
                "natter client: {e}"
            );
            return Ok(1);
        }
    };
    report!(
        json!({"event": "logged_in", "user": args.node.user, "listen": args.node.listen.to_string()}),
        "client ready: type `help` for the commands"
    );
    let audio = args.audio();
    let lines = stdin_lines();
    let begun = Instant::now();
    let mut call: Option<CallView> = None;
    let mut pending: Option<Pending> = None;
    let mut ever_connected = false;
    loop {
        if node.stopping() {
            node.client.close();
            return Ok(0);
        }
        if let Some(t) = args.timeout {
            if !ever_connected && begun.elapsed().as_secs_f64() > t {
                report!(
                    json!({"event": "error", "message": format!("no call connected within {t} s")}),
                    "timeout: no call connected within {t} s"
                );
                return Ok(1);
            }
        }
        if let Some(user) = dial.take() {
            if node.client.state().is_joined() {
                place(&node, &user, &audio, &mut call);
            } else {
                dial = Some(user);
            }
        }
        while let Ok(line) = lines.try_recv() {
            if let Some(p) = pending.take() {
                pending = p.answer(&node, line);
                continue;
            }
            if !command(&node, &line, &mut call, &mut pending, &audio, args.json) {
                node.client.close();
                return Ok(0);
            }
        }
        // Hang up on schedule.
        if let (Some(after), Some(c)) = (args.hangup_after, call.as_mut()) {
            if c.connected
                .is_some_and(|t| t.elapsed().as_secs_f64() >= after)
            {
                c.connected = None;
                report!(
                    json!({"event": "hanging_up", "call": call_id(c.call.id())}),
                    "hanging up"
                );
                let _ = c.call.hang_up();
            }
        }
        let Ok(e) = node
            .client
            .events()
            .recv_timeout(std::time::Duration::from_millis(100))
        else {
            continue;
        };
        match on_event(&node, &args, &audio, e, &mut call, &mut ever_connected) {
            Some(code) if args.exit_after_call => {
                node.client.close();
                return Ok(code);
            }
            _ => {}
        }
    }
}

/// Dial `user`.
fn place(node: &Running, user: &str, audio: &Audio, call: &mut Option<CallView>) {
    report!(json!({"event": "dialing", "user": user}), "dialing {user}");
    match node.client.call(user, audio.clone()) {
        Ok(c) => {
            *call = Some(CallView {
                call: c,
                connected: None,
            })
        }
        Err(e) => report!(
            json!({"event": "error", "message": e.to_string()}),
            "error: {e}"
        ),
    }
}

/// The name `call_state` events give why a call ended.
fn end_code(r: EndReason) -> &'static str {
    match r {
        EndReason::HungUp { local: false } => "peer_hung_up",
        EndReason::Declined { .. } => "declined",
        EndReason::Busy => "busy",
        EndReason::Cancelled { .. } => "cancelled",
        EndReason::Missed => "missed",
        EndReason::PeerVanished => "peer_vanished",
        EndReason::AnsweredElsewhere => "answered_elsewhere",
        _ => "hung_up",
    }
}

/// How a person reads why the path changed (`Better`, `Dead`, ...).
fn reason_word(r: PathReason) -> String {
    let n = r.name();
    let mut c = n.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// One event; `Some(exit code)` when the call ended (0 if one was ever connected).
fn on_event(
    node: &Running,
    args: &ClientArgs,
    audio: &Audio,
    e: Event,
    call: &mut Option<CallView>,
    ever_connected: &mut bool,
) -> Option<i32> {
    match e {
        Event::CallPlaced { call: id } => report!(
            json!({"event": "calling", "call": call_id(id)}),
            "calling (call {})",
            call_id(id)
        ),
        Event::CallEnded { reason, .. } if reason.never_placed() => {
            report!(
                json!({"event": "dial_failed", "reason": reason.to_string()}),
                "dial failed: {reason}"
            );
            *call = None;
            return Some(1);
        }
        Event::IncomingCall {
            call: incoming,
            from,
            device,
        } => {
            let id = incoming.id();
            report!(
                json!({"event": "incoming_call", "call": call_id(id), "user": from.as_str(), "device": device.to_string()}),
                "incoming call from {from} (call {})",
                call_id(id)
            );
            if args.auto_answer {
                if let Err(e) = incoming.answer(audio.clone()) {
                    report!(
                        json!({"event": "error", "message": e.to_string()}),
                        "answering: {e}"
                    );
                }
            }
            *call = Some(CallView {
                call: incoming,
                connected: None,
            });
        }
        Event::Ringing { call: id, device } => report!(
            json!({"event": "ringing", "call": call_id(id), "device": device.to_string()}),
            "ringing on device {device}"
        ),
        Event::CallConnected {
            call: id,
            device,
            setup,
        } => {
            *ever_connected = true;
            if let Some(c) = call.as_mut().filter(|c| c.call.id() == id) {
                c.connected = Some(Instant::now());
            }
            let ms = setup.as_secs_f64() * 1000.0;
            report!(
                json!({"event": "call_state", "call": call_id(id), "state": "connected",
                       "device": device.to_string(), "setup_ms": ms}),
                "call connected to device {device}, signalling took {ms:.1} ms"
            );
        }
        Event::CallHoldChanged {
            call: id,
            local,
            remote,
        } => report!(
            json!({"event": "call_state", "call": call_id(id),
                   "state": if local || remote { "held" } else { "connected" },
                   "local_hold": local, "remote_hold": remote}),
            "hold: local {local}, remote {remote}"
        ),
        Event::CallMerged { call: id } => report!(
            json!({"event": "glare", "dropped": call_id(id), "call": call_id(id)}),
            "both called at once: our call {} merged with theirs",
            call_id(id)
        ),
        Event::MissedBusy { call: id, from } => report!(
            json!({"event": "missed_busy", "call": call_id(id), "user": from.as_str()}),
            "{from} called while we were busy"
        ),
        Event::CallEnded { call: id, reason } => {
            let what = match reason {
                EndReason::HungUp { local: true } => "hung up".to_string(),
                EndReason::HungUp { local: false } => "the peer hung up".to_string(),
                other => other.to_string(),
            };
            let stats = node.client.call_by_id(id).and_then(|c| c.stats().ok());
            let frames = stats.map_or(0, |s| s.frames_in);
            report!(
                json!({"event": "call_state", "call": call_id(id), "state": "ended",
                       "reason": end_code(reason), "frames_in": frames}),
                "call ended: {what} ({frames} media frames received)"
            );
            if let Some(a) = stats.and_then(|s| s.audio) {
                let mos = a.mos.unwrap_or(0.0);
                report!(
                    json!({"event": "call_audio", "call": call_id(id), "frames_sent": a.frames_sent,
                           "frames_received": a.frames_received, "mos": mos,
                           "saved_to": args.audio_out.as_ref().map(|p| p.display().to_string())}),
                    "call audio: {} frames sent, {} received; estimated MOS {:.2}",
                    a.frames_sent,
                    a.frames_received,
                    mos
                );
                if let (false, Some(p)) = (args.json, &args.audio_out) {
                    say!("what the other side sent is in {}", p.display());
                }
            }
            *call = None;
            return Some(if *ever_connected { 0 } else { 1 });
        }
        Event::CallPath { call: id, path } => report!(
            json!({"event": "call_path", "call": call_id(id), "path": path.kind.name(),
                   "reason": path.reason.name(), "via": path.route}),
            "call path {} ({}) {}",
            path.kind.name(),
            reason_word(path.reason),
            path.route
        ),
        Event::CallStats { call: id, stats } => {
            let a = stats.audio;
            if args.json {
                crate::emit(json!({
                    "event": "call_stats",
                    "call": call_id(id),
                    "path": stats.path.map(|k| k.name()),
                    "rtt_ms": stats.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    "loss_in": stats.loss_in,
                    "loss_out": stats.loss_out,
                    "jitter_ms": stats.jitter_ms,
                    "frames_in": stats.frames_in,
                    "jitter_buffer_ms": a.map(|q| q.jitter_buffer_ms),
                    "loss_after_recovery": a.map(|q| q.loss_after_recovery),
                    "concealed_ms": a.map(|q| q.concealed_ms),
                    "bitrate_kbps": a.map(|q| q.bitrate_kbps),
                    "mos": a.and_then(|q| q.mos),
                    "voice_processing": a.map(|q| q.voice_processing.to_string()),
                    "echo_erle_db": a.and_then(|q| q.echo_erle_db),
                }));
            } else {
                say!(
                    "call stats: path {} rtt {} loss in {:.1}% out {:.1}% jitter {:.1} ms frames in {}",
                    stats.path.map_or("-", |k| k.name()),
                    stats
                        .rtt
                        .map(|r| format!("{:.1} ms", r.as_secs_f64() * 1000.0))
                        .unwrap_or_else(|| "-".into()),
                    stats.loss_in * 100.0,
                    stats.loss_out * 100.0,
                    stats.jitter_ms,
                    stats.frames_in
                );
                if let Some(q) = a {
                    say!(
                        "call audio: jitter buffer {:.0} ms, loss before recovery {:.1}% after {:.1}%, concealed {:.0} ms, bitrate {:.1} kbit/s, MOS {:.2}",
                        q.jitter_buffer_ms,
                        q.loss_before_recovery * 100.0,
                        q.loss_after_recovery * 100.0,
                        q.concealed_ms,
                        q.bitrate_kbps,
                        q.mos.unwrap_or(0.0)
                    );
                    say!(
                        "voice processing: {}{}",
                        q.voice_processing.to_string(),
                        q.echo_erle_db
                            .map(|e| format!(", echo attenuated {e:.1} dB"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        Event::FirstMedia { call: id, after } => {
            let ms = after.as_secs_f64() * 1000.0;
            report!(
                json!({"event": "first_media", "call": call_id(id), "ms": ms}),
                "first media received {ms:.1} ms after the call started"
            );
        }
        Event::MediaGap { call: id, gap } => {
            let ms = gap.as_secs_f64() * 1000.0;
            report!(
                json!({"event": "media_gap", "call": call_id(id), "ms": ms}),
                "media resumed after a gap of {ms:.0} ms"
            );
        }
        Event::AudioDevicesChanged { added, removed } => {
            let names = |l: &[natter::AudioDevice]| -> Vec<String> {
                l.iter().map(|d| d.id.clone()).collect()
            };
            report!(
                json!({"event": "audio_devices_changed", "added": names(&added),
                       "removed": names(&removed)}),
                "{}",
                Event::AudioDevicesChanged { added, removed }
            )
        }
        Event::AudioError { error, .. } => match error {
            AudioError::Microphone { .. } | AudioError::Speaker { .. } => say!("{error}"),
            other => report!(
                json!({"event": "error", "message": format!("audio: {other}")}),
                "audio: {other}"
            ),
        },
        other => {
            if args.json {
                if let Some(j) = event_json(&other) {
                    crate::emit(j);
                }
            } else {
                node.describe(&other)
            }
        }
    }
    None
}

/// A text-mode command that waits for the next lines of standard input (passwords).
enum Pending {
    /// `revoke DEVICE`: its password.
    Revoke { device: String },
    /// `passwd`: the current password.
    Old { revoke_others: bool },
    /// `passwd`: the new one.
    New { revoke_others: bool, old: String },
}

impl Pending {
    /// Ask for what it waits for (the terminal does not echo it).
    fn prompt(&self) {
        echo(false);
        match self {
            Pending::Revoke { .. } | Pending::Old { .. } => say!("Current password:"),
            Pending::New { .. } => say!("New password (at least 10 characters):"),
        }
    }

    /// Take `line`; what it waits for next, if anything.
    fn answer(self, node: &Running, line: String) -> Option<Pending> {
        echo(true);
        let r = match self {
            Pending::Revoke { device } => revoke(node, &device, &line),
            Pending::Old { revoke_others } => {
                let next = Pending::New {
                    revoke_others,
                    old: line,
                };
                next.prompt();
                return Some(next);
            }
            Pending::New { revoke_others, old } => {
                change_password(node, &old, &line, revoke_others)
            }
        };
        if let Err(e) = r {
            report!(json!({"event": "error", "message": e}), "error: {e}");
        }
        None
    }
}

/// Turn the terminal's echo of standard input off (while a password is typed) or back on.
/// Nothing happens when standard input is not a terminal.
fn echo(on: bool) {
    use rustix::termios::{isatty, tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    if !isatty(&stdin) {
        return;
    }
    if let Ok(mut t) = tcgetattr(&stdin) {
        t.local_modes.set(LocalModes::ECHO, on);
        let _ = tcsetattr(&stdin, OptionalActions::Now, &t);
    }
}

/// A device id in full (32 hexadecimal digits).
fn full_id(d: &natter::DeviceId) -> String {
    d.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// `devices`: the account's devices.
fn devices(node: &Running) -> Result<(), String> {
    let list = node.client.devices().map_err(|e| e.to_string())?;
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let json_list: Vec<serde_json::Value> = list
        .iter()
        .map(|d| {
            json!({"device": d.device.to_string(), "id": full_id(&d.device),
                   "first_seen": unix(d.first_seen), "last_seen": unix(d.last_seen),
                   "revoked_at": d.revoked.map(unix), "this_device": d.this_device})
        })
        .collect();
    let text: Vec<String> = list
        .iter()
        .map(|d| {
            format!(
                "  {}{}{}",
                d.device,
                if d.this_device { " (this device)" } else { "" },
                if d.revoked.is_some() { " revoked" } else { "" }
            )
        })
        .collect();
    report!(
        json!({"event": "devices", "devices": json_list}),
        "{} device(s):\n{}",
        list.len(),
        text.join("\n")
    );
    Ok(())
}

/// `revoke DEVICE`: `device` is an id or the start of one (the 12 digits shown), matching
/// exactly one device of the account in use.
fn revoke(node: &Running, device: &str, password: &str) -> Result<(), String> {
    let want = device.to_ascii_lowercase();
    let list = node.client.devices().map_err(|e| e.to_string())?;
    let matching: Vec<_> = list
        .iter()
        .filter(|d| {
            d.revoked.is_none() && !want.is_empty() && full_id(&d.device).starts_with(&want)
        })
        .collect();
    let d = match matching.as_slice() {
        [d] => d.device,
        [] => return Err(format!("no device {device} in use on this account")),
        _ => {
            return Err(format!(
                "{device} matches several devices: give more digits"
            ))
        }
    };
    node.client
        .revoke_device(d, password)
        .map_err(|e| e.to_string())?;
    report!(
        json!({"event": "device_revoked", "device": d.to_string()}),
        "device {d} revoked"
    );
    Ok(())
}

/// This user's presence in effect, as the `presence` event.
fn report_presence(p: &natter::Presence) {
    report!(
        json!({"event": "presence", "availability": p.availability.name(), "mood": p.mood}),
        "presence: {p}"
    );
}

/// A buddy-list entry as JSON events show it.
fn contact_json(c: &natter::Contact) -> serde_json::Value {
    json!({"user": c.user.as_str(), "contact": c.contact, "blocked": c.blocked,
           "nickname": c.nickname, "display_name": c.display_name, "groups": c.groups,
           "request": c.request, "availability": c.availability.name()})
}

/// A buddy-list entry in words: `  bob "Bobby" [work, family] online (blocked)`.
fn contact_text(c: &natter::Contact) -> String {
    let mut t = format!("  {}", c.user);
    if !c.nickname.is_empty() {
        t += &format!(" \"{}\"", c.nickname);
    }
    if !c.groups.is_empty() {
        t += &format!(" [{}]", c.groups.join(", "));
    }
    if c.contact && !c.blocked {
        t += &format!(" {}", c.availability.name());
    }
    match (c.contact, c.blocked) {
        (true, true) => t += " (blocked)",
        (false, true) => t += " (blocked, not a contact)",
        _ => {}
    }
    if let Some(note) = &c.request {
        t += &format!(" asks to be your contact: {note:?} (accept or decline)");
    }
    t
}

/// One edit of the buddy list: `add USER`, `remove USER`, `block USER`, `unblock USER`,
/// `nick USER [NICKNAME]`, `group USER LABEL`, `ungroup USER LABEL`, or their JSON forms.
fn edit_contact(
    node: &Running,
    cmd: &str,
    arg: Option<String>,
    value: &serde_json::Value,
    json: bool,
) -> Result<(), String> {
    let text = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let flag = |k: &str| value.get(k).and_then(|v| v.as_bool());
    // Text mode: the user, then the rest of the line (a nickname or a label).
    let (user, rest) = if json {
        (text("user"), None)
    } else {
        match arg.as_deref().map(str::trim) {
            Some(a) => match a.split_once(char::is_whitespace) {
                Some((u, r)) => (Some(u.to_string()), Some(r.trim().to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        }
    };
    let user = user.ok_or_else(|| format!("{cmd} needs a user"))?;
    let c = &node.client;
    let changed = match cmd {
        "add" | "add_contact" | "accept" | "accept_contact" => {
            let note = if json { text("note") } else { rest };
            c.add_contact(&user, note.as_deref().unwrap_or(""))
        }
        "decline_contact" => c.decline_contact(&user),
        "remove" | "remove_contact" => c.remove_contact(&user),
        "block" => c.block(&user, flag("blocked").unwrap_or(true)),
        "unblock" => c.block(&user, false),
        "nick" | "set_nickname" => {
            let nickname = if json { text("nickname") } else { rest };
            c.set_nickname(&user, nickname.as_deref().unwrap_or(""))
        }
        _ => {
            let label = if json { text("label") } else { rest };
            let label = label.ok_or_else(|| format!("{cmd} needs a user and a label"))?;
            let member = match cmd {
                "group" => true,
                "ungroup" => false,
                _ => flag("member").unwrap_or(true),
            };
            c.set_group(&user, &label, member)
        }
    }
    .map_err(|e| e.to_string())?;
    let name = natter::UserName::parse(&user).map_err(|e| e.to_string())?;
    let entry = c.contact(name.as_str());
    let shown = entry
        .as_ref()
        .map_or_else(|| format!("  {name} (not in the list)"), contact_text);
    let mut j = entry.as_ref().map_or_else(
        || {
            json!({"user": name.as_str(), "contact": false, "blocked": false, "nickname": "",
                  "display_name": "", "groups": [], "availability": "offline"})
        },
        contact_json,
    );
    j["event"] = json!("contact");
    j["changed"] = json!(changed);
    report!(
        j,
        "{}{}",
        shown.trim_start(),
        if changed { "" } else { " (unchanged)" }
    );
    Ok(())
}

/// A message as the JSON interface shows it.
fn message_json(m: &natter::ChatMessage) -> serde_json::Value {
    let sent_at = m
        .sent_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({"id": m.id.to_hex(), "with": m.with.as_str(), "author": m.author.as_str(),
           "device": m.device.to_string(), "outgoing": m.outgoing, "text": m.text,
           "reply_to": m.reply_to.map(|r| r.to_hex()), "sent_at": sent_at,
           "status": m.status.name()})
}

/// A message in words: `  alice: hello (delivered)`.
fn message_text(m: &natter::ChatMessage) -> String {
    let status = match m.status {
        natter::MessageStatus::Received => String::new(),
        s => format!(" ({})", s.name()),
    };
    format!("  {}: {}{status}", m.author, m.text)
}

/// `chat USER TEXT`: write a message.
fn send_message(
    node: &Running,
    user: &str,
    text: &str,
    reply_to: Option<String>,
) -> Result<(), String> {
    let m = match reply_to {
        Some(r) => {
            let id = natter::MessageId::from_hex(&r)
                .ok_or_else(|| format!("{r:?} is not a message id (32 hex digits)"))?;
            node.client.reply_to_message(user, id, text)
        }
        None => node.client.send_message(user, text),
    }
    .map_err(|e| e.to_string())?;
    let mut j = message_json(&m);
    j["event"] = json!("message_written");
    report!(
        j,
        "message {} to {}: {}",
        m.id.to_hex(),
        m.with,
        m.status.name()
    );
    Ok(())
}

/// `history USER [N]`: the last messages with a user.
fn history(node: &Running, user: &str, before: Option<String>, limit: u64) -> Result<(), String> {
    let before = match before {
        Some(b) => Some(
            natter::MessageId::from_hex(&b)
                .ok_or_else(|| format!("{b:?} is not a message id (32 hex digits)"))?,
        ),
        None => None,
    };
    let page = node
        .client
        .history(user, before, limit as usize)
        .map_err(|e| e.to_string())?;
    let list: Vec<_> = page.iter().map(message_json).collect();
    let lines: Vec<String> = page.iter().map(message_text).collect();
    report!(
        json!({"event": "history", "user": user, "messages": list}),
        "{} message(s) with {user}{}{}",
        lines.len(),
        if lines.is_empty() { "" } else { ":\n" },
        lines.join("\n")
    );
    Ok(())
}

/// `passwd`: change the password, revoking the other devices when asked.
fn change_password(
    node: &Running,
    old: &str,
    new: &str,
    revoke_others: bool,
) -> Result<(), String> {
    node.client
        .change_password(old, new, revoke_others)
        .map_err(|e| e.to_string())?;
    report!(
        json!({"event": "password_changed", "revoked_others": revoke_others}),
        "password changed{}",
        if revoke_others {
            "; every other device revoked"
        } else {
            ""
        }
    );
    Ok(())
}

/// One line from standard input (words, or a JSON command in JSON mode); returns false on
/// `quit`.
fn command(
    node: &Running,
    line: &str,
    call: &mut Option<CallView>,
    pending: &mut Option<Pending>,
    audio: &Audio,
    json: bool,
) -> bool {
    let mut value = serde_json::Value::Null;
    let parsed: Result<(String, Option<String>), String> = if json {
        if line.trim().is_empty() {
            return true;
        }
        serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| format!("not a JSON command: {e}"))
            .and_then(|v| {
                let cmd = v
                    .get("cmd")
                    .and_then(|c| c.as_str())
                    .ok_or("a command needs a \"cmd\" string")?
                    .to_string();
                let user = v.get("user").and_then(|u| u.as_str()).map(str::to_string);
                value = v;
                Ok((cmd, user))
            })
    } else {
        // The command, and the rest of the line as its argument ("voice echo, noise").
        let line = line.trim();
        match line.split_once(char::is_whitespace) {
            None if line.is_empty() => return true,
            None => Ok((line.to_string(), None)),
            Some((w, rest)) => Ok((w.to_string(), Some(rest.trim().to_string()))),
        }
    };
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let current = call.as_ref().map(|c| c.call.clone());
    let r: Result<(), String> = match parsed {
        Err(e) => Err(e),
        Ok((cmd, arg)) => match (cmd.as_str(), arg) {
            ("quit", _) => return false,
            ("help", _) => {
                say!("{HELP}");
                Ok(())
            }
            ("call", Some(user)) => match natter::UserName::parse(&user) {
                Ok(u) => {
                    place(node, u.as_str(), audio, call);
                    Ok(())
                }
                Err(e) => Err(format!("{user}: {e}")),
            },
            ("search", Some(user)) => node
                .client
                .search(&user)
                .map(|_| ())
                .map_err(|e| format!("{user}: {e}")),
            ("call" | "search", None) => Err(format!("{cmd} needs a user")),
            (c @ ("mute" | "unmute"), _) => match &current {
                Some(call) => {
                    let muted = c == "mute";
                    call.set_muted(muted)
                        .map(|()| {
                            report!(json!({"event": "muted", "muted": muted}), "muted: {muted}")
                        })
                        .map_err(|e| e.to_string())
                }
                None => Err("no call".into()),
            },
            // `decline` alone declines the call that rings; with a user, their request.
            ("decline", Some(user)) if !json => {
                edit_contact(node, "decline_contact", Some(user), &value, json)
            }
            (c @ ("answer" | "decline" | "hangup" | "hold" | "resume"), _) => match &current {
                None => Err("no call".into()),
                Some(call) => match c {
                    "answer" => call.answer(audio.clone()),
                    "decline" => call.decline(),
                    "hangup" => call.hang_up(),
                    "hold" => call.hold(),
                    _ => call.resume(),
                }
                .map_err(|e| e.to_string()),
            },
            ("voice" | "voice_processing", arg) => {
                let set = if json { field("set") } else { arg };
                match (&current, set.as_deref().map(parse_processing)) {
                    (None, _) => Err("no call".into()),
                    (_, None) => Err(format!("{cmd} needs auto, off or stages like echo,noise")),
                    (_, Some(Err(e))) => Err(e),
                    (Some(call), Some(Ok(p))) => call
                        .set_voice_processing(p)
                        .map(|()| {
                            let set = p.map_or("auto".to_string(), |p| p.to_string());
                            report!(
                                json!({"event": "voice_processing", "call": call_id(call.id()), "set": set}),
                                "voice processing: {set}"
                            )
                        })
                        .map_err(|e| e.to_string()),
                }
            }
            ("devices", _) => devices(node),
            ("contacts", _) => {
                let entries = node.client.contacts();
                let list: Vec<_> = entries.iter().map(contact_json).collect();
                let text: Vec<String> = entries.iter().map(contact_text).collect();
                report!(
                    json!({"event": "contacts", "contacts": list}),
                    "{} in the buddy list{}{}",
                    text.len(),
                    if text.is_empty() { "" } else { ":\n" },
                    text.join("\n")
                );
                Ok(())
            }
            (c @ ("add" | "add_contact" | "accept" | "accept_contact" | "decline_contact"
            | "remove" | "remove_contact" | "block" | "unblock" | "nick" | "set_nickname"
            | "group" | "ungroup" | "set_group"), arg) => {
                edit_contact(node, c, arg, &value, json)
            }
            ("sync" | "sync_contacts", _) => node
                .client
                .sync_contacts(None)
                .map(|s| {
                    report!(
                        json!({"event": "contacts_synced", "version": s.version, "merged": s.merged}),
                        "buddy list in step with its backup (version {})",
                        s.version
                    )
                })
                .map_err(|e| e.to_string()),
            (c @ ("chat" | "send_message"), arg) => {
                let (user, text) = if json {
                    (field("user"), field("text"))
                } else {
                    match arg.as_deref().and_then(|a| a.split_once(char::is_whitespace)) {
                        Some((u, t)) => (Some(u.to_string()), Some(t.trim().to_string())),
                        None => (arg.clone(), None),
                    }
                };
                let reply_to = field("reply_to");
                match (user, text) {
                    (Some(user), Some(text)) => send_message(node, &user, &text, reply_to),
                    _ => Err(format!("{c} needs a user and a text")),
                }
            }
            ("history", arg) => {
                let (user, limit) = if json {
                    let limit = value.get("limit").and_then(|v| v.as_u64());
                    (field("user"), limit)
                } else {
                    match arg.as_deref().map(str::trim) {
                        Some(a) => match a.split_once(char::is_whitespace) {
                            Some((u, n)) => (Some(u.to_string()), n.trim().parse().ok()),
                            None => (Some(a.to_string()), None),
                        },
                        None => (None, None),
                    }
                };
                match user {
                    Some(user) => history(node, &user, field("before"), limit.unwrap_or(20)),
                    None => Err("history needs a user".into()),
                }
            }
            (c @ ("find" | "search_messages"), arg) => {
                let text = if json { field("text") } else { arg };
                match text {
                    Some(text) => {
                        let limit = value.get("limit").and_then(|v| v.as_u64()).unwrap_or(20);
                        node.client
                            .search_messages(&text, limit as usize)
                            .map(|found| {
                                let list: Vec<_> = found.iter().map(message_json).collect();
                                let lines: Vec<String> = found.iter().map(message_text).collect();
                                report!(
                                    json!({"event": "messages_found", "text": text, "messages": list}),
                                    "{} message(s) with {text:?}{}{}",
                                    lines.len(),
                                    if lines.is_empty() { "" } else { ":\n" },
                                    lines.join("\n")
                                )
                            })
                            .map_err(|e| e.to_string())
                    }
                    None => Err(format!("{c} needs a text")),
                }
            }
            ("credentials" | "export_credentials", _) => credentials(node),
            ("audio" | "audio_devices", _) => audio_devices(),
            (c @ ("mic" | "speaker" | "set_microphone" | "set_speaker"), arg) => {
                let device = if json { field("device") } else { arg };
                let device = device.filter(|d| d != "default");
                match &current {
                    None => Err("no call".into()),
                    Some(call) => {
                        let microphone = c == "mic" || c == "set_microphone";
                        if microphone {
                            call.set_microphone(device.as_deref())
                        } else {
                            call.set_speaker(device.as_deref())
                        }
                        .map(|()| {
                            let kind = if microphone { "microphone" } else { "speaker" };
                            let shown = device.as_deref().unwrap_or("default");
                            report!(
                                json!({"event": "audio_device", "kind": kind, "device": device}),
                                "{kind}: {shown}"
                            )
                        })
                        .map_err(|e| e.to_string())
                    }
                }
            }
            ("logout", _) => match node.client.logout() {
                Ok(()) => {
                    report!(
                        json!({"event": "logged_out"}),
                        "logged out: the next start asks for the password"
                    );
                    return false;
                }
                Err(e) => Err(e.to_string()),
            },
            ("revoke_device", _) if json => match (field("device"), field("password")) {
                (Some(d), Some(p)) => revoke(node, &d, &p),
                _ => Err("revoke_device needs \"device\" and \"password\"".into()),
            },
            ("change_password", _) if json => {
                match (field("old_password"), field("new_password")) {
                    (Some(old), Some(new)) => {
                        let others = value.get("revoke_others").and_then(|v| v.as_bool());
                        change_password(node, &old, &new, others.unwrap_or(false))
                    }
                    _ => Err("change_password needs \"old_password\" and \"new_password\"".into()),
                }
            }
            ("revoke", Some(device)) if !json => {
                let p = Pending::Revoke { device };
                p.prompt();
                *pending = Some(p);
                Ok(())
            }
            ("revoke", None) if !json => Err("revoke needs a device (see `devices`)".into()),
            ("passwd", arg) if !json => {
                let p = Pending::Old {
                    revoke_others: arg.as_deref() == Some("revoke-others"),
                };
                p.prompt();
                *pending = Some(p);
                Ok(())
            }
            ("set_presence", arg) | ("status", arg @ Some(_)) => {
                // `status away [mood...]`, or the JSON command's fields.
                let (name, mood) = if json {
                    (field("availability").unwrap_or_default(), field("mood"))
                } else {
                    let text = arg.unwrap_or_default();
                    match text.split_once(char::is_whitespace) {
                        Some((a, m)) => (a.to_string(), Some(m.trim().to_string())),
                        None => (text, None),
                    }
                };
                match natter::Availability::from_name(&name) {
                    None => Err(format!(
                        "{name:?}: the availability is online, away, dnd or invisible"
                    )),
                    Some(a) => node
                        .client
                        .set_presence(a, mood.as_deref().unwrap_or(""))
                        .map(|()| report_presence(&node.client.presence()))
                        .map_err(|e| e.to_string()),
                }
            }
            ("presence", _) => {
                report_presence(&node.client.presence());
                Ok(())
            }
            (c @ ("away_after" | "away-after" | "idle" | "report_idle"), arg) => {
                let secs = if json {
                    value.get("seconds").and_then(|v| v.as_u64())
                } else {
                    arg.as_deref().and_then(|a| a.trim().parse().ok())
                };
                match secs {
                    None => Err(format!("{c} needs a number of seconds")),
                    Some(s) => {
                        let d = std::time::Duration::from_secs(s);
                        if c.starts_with("away") {
                            node.client.set_away_after((s > 0).then_some(d));
                        } else {
                            node.client.report_idle(d);
                        }
                        report_presence(&node.client.presence());
                        Ok(())
                    }
                }
            }
            ("status", _) => {
                let s = node.client.state();
                let nat = s.nat.map(|n| n.describe().to_string());
                let sn: Vec<String> = s.super_nodes.iter().map(|a| a.to_string()).collect();
                report!(
                    json!({"event": "status", "attach": s.attach, "super_nodes": sn,
                           "nat": nat, "call": s.call.map(call_id)}),
                    "{}; NAT {}; call {}",
                    s.attach,
                    nat.as_deref().unwrap_or("unknown"),
                    s.call.map_or_else(|| "none".to_string(), call_id)
                );
                Ok(())
            }
            (other, _) => Err(format!(
                "unknown command {other:?}: type `help` for the commands"
            )),
        },
    };
    if let Err(e) = r {
        report!(json!({"event": "error", "message": e}), "error: {e}");
    }
    true
}

/// List the system's audio devices (`audio` / `{"cmd":"audio_devices"}`).
fn audio_devices() -> Result<(), String> {
    let list = natter::audio_devices().map_err(|e| e.to_string())?;
    let json_list: Vec<_> = list
        .iter()
        .map(|d| {
            json!({"name": d.name, "id": d.id, "input": d.input, "output": d.output,
                   "default_input": d.default_input, "default_output": d.default_output})
        })
        .collect();
    let text: Vec<String> = list
        .iter()
        .map(|d| {
            let kind = match (d.input, d.output) {
                (true, true) => "in/out",
                (true, false) => "in",
                _ => "out",
            };
            let default = if d.default_input || d.default_output {
                " (default)"
            } else {
                ""
            };
            format!("  {} [{kind}] {}{default}", d.id, d.name)
        })
        .collect();
    report!(
        json!({"event": "audio_devices", "devices": json_list}),
        "{} audio device(s){}{}",
        list.len(),
        if text.is_empty() { "" } else { ":\n" },
        text.join("\n")
    );
    Ok(())
}

/// Export this device's credentials (`credentials` / `{"cmd":"export_credentials"}`).
fn credentials(node: &Running) -> Result<(), String> {
    let c = node.client.credentials().map_err(|e| e.to_string())?;
    let hex = crate::node::to_hex(&c.to_bytes());
    report!(
        json!({"event": "credentials", "device": c.device().to_string(),
               "user": c.user().map(|u| u.to_string()), "hex": hex}),
        "credentials of device {} (secret; NATTER_CREDENTIALS takes them): {hex}",
        c.device()
    );
    Ok(())
}

/// What `help` prints.
const HELP: &str = "commands:
  call USER       call every online device of USER
  answer          answer the call that rings here
  decline         decline it
  hangup          hang up (or cancel a call not answered yet)
  hold, resume    put the call on hold and back
  mute, unmute    stop and restart sending audio
  voice STAGES    the call's voice processing: auto, off, or some of echo,noise,gain
  search USER     look USER up in the global index
  contacts        the buddy list (backed up, encrypted, on the login server)
  add USER [NOTE] add USER to the buddy list and ask them to add you (with a note);
                  remove USER takes them out
  accept USER     accept USER's contact request; decline USER declines it (unseen by them)
  block USER      never ring for USER's calls; unblock USER
  nick USER [NAME]
                  give USER a nickname (none without NAME)
  group USER LABEL
                  put USER in the group LABEL; ungroup USER LABEL takes them out
  sync            merge the buddy list with its backup now (it happens by itself too)
  chat USER TEXT  write TEXT to USER (end-to-end encrypted; delivered to every device)
  history USER [N]
                  the last N (20) messages with USER, oldest first
  find TEXT       messages of every conversation containing TEXT
  devices         this account's devices
  audio           the system's audio devices (microphones and speakers)
  mic DEVICE      switch the call's microphone (an id or name from `audio`, or default)
  speaker DEVICE  switch the call's speaker
  credentials     this device's credentials in hex (secret: keys and certificate), for
                  NATTER_CREDENTIALS
  revoke DEVICE   revoke another device of this account (asks for the password)
  passwd [revoke-others]
                  change the password (and revoke every other device)
  status          how this node is joined, its NAT type, the current call
  status AVAILABILITY [MOOD]
                  set your presence: online, away, dnd (calls are refused busy) or invisible
                  (searches find you offline), with a mood text
  away-after SECONDS
                  turn online into away after SECONDS idle (0: never); idle SECONDS tells
                  how long you have been idle
  logout          log out on this device (forget the certificate) and leave
  quit            leave (Ctrl-C too)";

/// Voice processing as `--voice-processing` and `voice` take it: `auto` (`None`), or what
/// [`VoiceProcessing`]'s `FromStr` reads (`off`, or some of `echo`, `noise`, `gain`).
fn parse_processing(s: &str) -> Result<Option<VoiceProcessing>, String> {
    match s.trim() {
        "auto" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|e| format!("{e} (or auto)")),
    }
}

/// `--voice-processing`'s value: `None` for `auto`.
#[derive(Debug, Clone, Copy)]
struct Stages(Option<VoiceProcessing>);

fn parse_stages(s: &str) -> Result<Stages, String> {
    parse_processing(s).map(Stages)
}

/// A call id as events show it: 32 hex digits.
fn call_id(id: CallId) -> String {
    format!("{:032x}", id.as_u64())
}

/// The JSON event of a joining or search event.
fn event_json(e: &Event) -> Option<serde_json::Value> {
    Some(match e {
        Event::Attached {
            super_node,
            transport,
            seen_as,
            ..
        } => json!({"event": "attached", "super_node": super_node.to_string(),
                     "transport": crate::node::transport_name(*transport).to_lowercase(),
                     "reflexive": seen_as.to_string()}),
        Event::Detached { super_node, .. } => {
            json!({"event": "detached", "super_node": super_node.to_string()})
        }
        Event::NoSuperNode { .. } => json!({"event": "no_super_node"}),
        Event::NatDetected { nat, mapped, .. } => json!({"event": "nat", "type": nat.describe(),
                                    "mapped": mapped.map(|m| m.to_string())}),
        Event::SearchResult { user, outcome, .. } => {
            let (result, devices) = match &outcome.found {
                Found::Devices(records) => (
                    "found",
                    records
                        .iter()
                        .map(|r| json!({"device": r.device.to_string(), "online": r.online,
                                        "last_seen": r.last_seen.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                                        "super_nodes": r.super_nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
                        .collect::<Vec<_>>(),
                ),
                Found::NotFound => ("not_found", vec![]),
                _ => ("unavailable", vec![]),
            };
            json!({"event": "search_result", "user": user.as_str(), "result": result,
                   "devices": devices, "hops": outcome.hops,
                   "ms": outcome.took.as_secs_f64() * 1000.0})
        }
        Event::CertificateRenewed => json!({"event": "certificate_renewed"}),
        Event::ContactsSynced { version, merged } => {
            json!({"event": "contacts_synced", "version": version, "merged": merged})
        }
        Event::ContactRequest { from, note } => {
            json!({"event": "contact_request", "user": from.as_str(), "note": note})
        }
        Event::ContactAccepted { user } => {
            json!({"event": "contact_accepted", "user": user.as_str()})
        }
        Event::ContactPresence { user, availability } => {
            json!({"event": "contact_presence", "user": user.as_str(),
                   "availability": availability.name()})
        }
        Event::ContactRequestFailed { user, error } => {
            json!({"event": "contact_request_failed", "user": user.as_str(),
                   "message": error.to_string()})
        }
        Event::ContactsSyncFailed { error, retry } => {
            json!({"event": "contacts_sync_failed", "message": error.to_string(),
                   "retry_ms": retry.map(|r| r.as_millis() as u64)})
        }
        Event::LoginRequired => json!({"event": "login_required"}),
        Event::MessageReceived { message } => {
            let mut j = message_json(message);
            j["event"] = json!("message_received");
            j
        }
        Event::MessageStatus { id, with, status } => {
            json!({"event": "message_status", "id": id.to_hex(), "with": with.as_str(),
                   "status": status.name()})
        }
        _ => return None,
    })
}

/// Lines of standard input, read on a thread of their own.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag as clap hands it over (an `Option<Option<_>>` field here once panicked).
    #[test]
    fn the_voice_processing_flag_parses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            client: ClientArgs,
        }
        let parse = |v: &str| {
            Cli::try_parse_from([
                "natter",
                "--network",
                "n.toml",
                "--data",
                "d",
                "--user",
                "alice",
                "--voice-processing",
                v,
            ])
            .map(|c| c.client.voice_processing.0)
        };
        assert_eq!(parse("off").unwrap(), Some(VoiceProcessing::OFF));
        assert_eq!(parse("auto").unwrap(), None);
        assert_eq!(
            parse("echo,gain").unwrap().unwrap().to_string(),
            "echo,gain"
        );
        assert!(parse("loud").is_err());
        let default =
            Cli::try_parse_from(["natter", "--network", "n", "--data", "d", "--user", "a"]);
        assert_eq!(default.unwrap().client.voice_processing.0, None);
    }

    #[test]
    fn voice_processing_reads_back_as_written() {
        assert_eq!(parse_processing("auto"), Ok(None));
        assert_eq!(parse_processing("off"), Ok(Some(VoiceProcessing::OFF)));
        assert_eq!(
            parse_processing("echo,noise,gain"),
            Ok(Some(VoiceProcessing::ALL))
        );
        let p = parse_processing(" noise , echo ").unwrap().unwrap();
        assert_eq!(p.to_string(), "echo,noise");
        assert_eq!(VoiceProcessing::OFF.to_string(), "off");
        assert!(parse_processing("echo,reverb").is_err());
        assert!(parse_processing("").is_err());
    }
}
