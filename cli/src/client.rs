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
use std::time::{Duration, Instant};

use natter_core::call::{CallEvent, EndReason};
use natter_core::crypto::UserName;
use natter_core::overlay::AttachEvent;
use natter_core::overlay::SearchResult;
use natter_core::wire::message::CallId;
use natter_media::audio::device::{CaptureDevice, PlaybackDevice};
use natter_media::audio::synth::Tone;
use natter_media::audio::wav::{WavSink, WavSource};
use natter_media::audio::{AudioSink, AudioSource};
use natter_media::call::{CallAudio, CallAudioConfig};
use natter_overlay::node::{DialOutcome, Node, NodeEvent, RolePolicy};
use natter_transport::runtime::RuntimeHandle;
use serde_json::json;

use crate::node::{describe, NodeArgs, Started};

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
    /// Be driven by a program: one JSON command per line on standard input, one JSON event
    /// per line on standard output (see docs/json-api.md); logs stay on standard error.
    #[arg(long)]
    json: bool,
}

/// What the current call is doing, as the client follows it.
struct CallView {
    id: CallId,
    /// When the dial or the incoming call started (setup time reference).
    started: Instant,
    connected: Option<Instant>,
    first_media: Option<Instant>,
    last_media: Option<Instant>,
    frames_in: u64,
    audio: Option<CallAudio>,
}

/// Run the client; returns the exit code.
pub fn run(args: ClientArgs) -> i32 {
    match run_inner(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natter client: {e}");
            1
        }
    }
}

fn run_inner(args: ClientArgs) -> Result<i32, String> {
    let mut dial = args
        .call
        .as_deref()
        .map(|u| UserName::parse(u).map_err(|e| format!("--call {u}: {e}")))
        .transpose()?;
    if args.json {
        crate::set_json_mode();
    }
    let mut node = match Started::start(&args.node, Some(RolePolicy::Forbid)) {
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
    let lines = stdin_lines();
    let begun = Instant::now();
    let mut call: Option<CallView> = None;
    let mut ever_connected = false;
    // Links to super nodes now up.
    let mut links = 0usize;
    let mut last_housekeeping = Instant::now();
    loop {
        if node.stopping() {
            node.save_cache();
            return Ok(0);
        }
        if last_housekeeping.elapsed() >= Duration::from_secs(1) {
            node.housekeeping();
            last_housekeeping = Instant::now();
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
            if node.joined() {
                report!(
                    json!({"event": "dialing", "user": user.as_str()}),
                    "dialing {user}"
                );
                let u = user.clone();
                node.rt.command(move |n, now| n.call(now, u));
                call = None;
                // The view starts when the dial is placed (setup time counts the search).
                call.replace(CallView::new(CallId([0; 16])));
            } else {
                dial = Some(user);
            }
        }
        while let Ok(line) = lines.try_recv() {
            if !command(&node, &line, &mut call, args.json) {
                return Ok(0);
            }
        }
        // Hang up on schedule.
        if let (Some(after), Some(c)) = (args.hangup_after, call.as_ref()) {
            if c.connected
                .is_some_and(|t| t.elapsed().as_secs_f64() >= after)
            {
                let id = c.id;
                report!(
                    json!({"event": "hanging_up", "call": call_id(id)}),
                    "hanging up"
                );
                let _ = node.rt.command(move |n, now| n.hang_up(now, id));
            }
        }
        let Ok(e) = node.rt.events().recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match e {
            NodeEvent::Dial { outcome, .. } => match outcome {
                DialOutcome::Calling(id) => {
                    report!(
                        json!({"event": "calling", "call": call_id(id)}),
                        "calling (call {id:?})"
                    );
                    if let Some(c) = call.as_mut() {
                        c.id = id;
                    } else {
                        call = Some(CallView::new(id));
                    }
                }
                DialOutcome::Failed(e) => {
                    report!(
                        json!({"event": "dial_failed", "reason": e.to_string()}),
                        "dial failed: {e}"
                    );
                    call = None;
                    if args.exit_after_call {
                        return Ok(1);
                    }
                }
            },
            NodeEvent::Call(ev) => {
                if handle_call_event(&node, &args, ev, &mut call, &mut ever_connected)
                    && args.exit_after_call
                {
                    return Ok(if ever_connected { 0 } else { 1 });
                }
            }
            NodeEvent::CallPath {
                call: id,
                kind,
                reason,
                path,
            } => report!(
                json!({"event": "call_path", "call": call_id(id), "path": kind.name(),
                       "reason": format!("{reason:?}").to_lowercase(), "via": format!("{path:?}")}),
                "call path {} ({reason:?}) {path:?}",
                kind.name()
            ),
            NodeEvent::CallQuality { call: id, quality } => {
                if let Some(a) = call.as_ref().and_then(|c| c.audio.as_ref()) {
                    a.on_report(quality.loss_out, quality.jitter_ms, quality.rtt);
                }
                if args.json {
                    let audio = call
                        .as_ref()
                        .and_then(|c| c.audio.as_ref())
                        .map(|a| a.stats().receiver.quality);
                    crate::emit(json!({
                        "event": "call_stats",
                        "call": call_id(id),
                        "path": quality.kind.map(|k| k.name()),
                        "rtt_ms": quality.rtt.map(|r| r.as_secs_f64() * 1000.0),
                        "loss_in": quality.loss_in,
                        "loss_out": quality.loss_out,
                        "jitter_ms": quality.jitter_ms,
                        "frames_in": quality.frames_in,
                        "jitter_buffer_ms": audio.map(|q| q.jitter_buffer_ms),
                        "loss_after_recovery": audio.map(|q| q.loss_after_recovery),
                        "concealed_ms": audio.map(|q| q.concealed_ms),
                        "bitrate_kbps": audio.map(|q| q.bitrate_bps / 1000.0),
                        "mos": audio.map(|q| q.mos),
                    }));
                    continue;
                }
                say!(
                    "call stats: path {} rtt {} loss in {:.1}% out {:.1}% jitter {:.1} ms frames in {}",
                    quality.kind.map_or("-", |k| k.name()),
                    quality
                        .rtt
                        .map(|r| format!("{:.1} ms", r.as_secs_f64() * 1000.0))
                        .unwrap_or_else(|| "-".into()),
                    quality.loss_in * 100.0,
                    quality.loss_out * 100.0,
                    quality.jitter_ms,
                    quality.frames_in
                );
                if let Some(a) = call.as_ref().and_then(|c| c.audio.as_ref()) {
                    let q = a.stats().receiver.quality;
                    say!(
                        "call audio: jitter buffer {:.0} ms, loss before recovery {:.1}% after {:.1}%, concealed {:.0} ms, bitrate {:.1} kbit/s, MOS {:.2}",
                        q.jitter_buffer_ms,
                        q.loss_before_recovery * 100.0,
                        q.loss_after_recovery * 100.0,
                        q.concealed_ms,
                        q.bitrate_bps / 1000.0,
                        q.mos
                    );
                }
            }
            NodeEvent::CallMedia { call: id, data } => {
                if let Some(c) = call.as_mut() {
                    if let Some(a) = &c.audio {
                        a.receive(&data);
                    }
                    c.frames_in += 1;
                    let now = Instant::now();
                    if let Some(gap) = c.last_media.map(|t| now - t) {
                        // An interruption (a path switch, a loss burst) is worth a line.
                        if gap >= Duration::from_millis(100) {
                            let ms = gap.as_secs_f64() * 1000.0;
                            report!(
                                json!({"event": "media_gap", "call": call_id(id), "ms": ms}),
                                "media resumed after a gap of {ms:.0} ms"
                            );
                        }
                    }
                    c.last_media = Some(now);
                    if c.first_media.is_none() {
                        c.first_media = Some(Instant::now());
                        let ms = c.started.elapsed().as_secs_f64() * 1000.0;
                        report!(
                            json!({"event": "first_media", "call": call_id(id), "ms": ms}),
                            "first media received {ms:.1} ms after the call started"
                        );
                    }
                }
            }
            NodeEvent::Attach(AttachEvent::NoSuperNode) if links > 0 => {
                // Still linked to one: the node only looks for a second.
            }
            other => {
                match &other {
                    NodeEvent::Attach(AttachEvent::Attached { .. }) => links += 1,
                    NodeEvent::Attach(AttachEvent::Detached { .. }) => {
                        links = links.saturating_sub(1)
                    }
                    _ => {}
                }
                if args.json {
                    if let Some(j) = event_json(&other) {
                        crate::emit(j);
                    }
                } else {
                    describe(&other)
                }
            }
        }
    }
}

impl CallView {
    fn new(id: CallId) -> Self {
        Self {
            id,
            started: Instant::now(),
            connected: None,
            first_media: None,
            last_media: None,
            frames_in: 0,
            audio: None,
        }
    }
}

/// One call event; returns true when the call ended.
fn handle_call_event(
    node: &Started,
    args: &ClientArgs,
    ev: CallEvent,
    call: &mut Option<CallView>,
    ever_connected: &mut bool,
) -> bool {
    match ev {
        CallEvent::Incoming {
            call: id,
            user,
            device,
            ..
        } => {
            report!(
                json!({"event": "incoming_call", "call": call_id(id), "user": user.as_str(), "device": device.to_string()}),
                "incoming call from {user} (call {id:?})"
            );
            *call = Some(CallView::new(id));
            if args.auto_answer {
                let r = node.rt.command(move |n, now| n.answer(now, id));
                if let Err(e) = r {
                    report!(
                        json!({"event": "error", "message": e.to_string()}),
                        "answering: {e}"
                    );
                }
            }
        }
        CallEvent::Ringing { call: id, device } => report!(
            json!({"event": "ringing", "call": call_id(id), "device": device.to_string()}),
            "ringing on device {device}"
        ),
        CallEvent::Connected {
            call: id, device, ..
        } => {
            *ever_connected = true;
            let c = call.get_or_insert_with(|| CallView::new(id));
            c.id = id;
            c.connected = Some(Instant::now());
            let ms = c.started.elapsed().as_secs_f64() * 1000.0;
            report!(
                json!({"event": "call_state", "call": call_id(id), "state": "connected",
                       "device": device.to_string(), "setup_ms": ms}),
                "call connected to device {device}, signalling took {ms:.1} ms"
            );
            match start_audio(node.rt.handle(), id, args) {
                Ok(a) => c.audio = Some(a),
                Err(e) => report!(
                    json!({"event": "error", "message": format!("audio: {e}")}),
                    "audio: {e}"
                ),
            }
        }
        CallEvent::HoldChanged {
            call: id,
            local_hold,
            remote_hold,
        } => {
            report!(
                json!({"event": "call_state", "call": call_id(id),
                       "state": if local_hold || remote_hold { "held" } else { "connected" },
                       "local_hold": local_hold, "remote_hold": remote_hold}),
                "hold: local {local_hold}, remote {remote_hold}"
            );
            // No media while held (the path stays watched: about 3 probes a second).
            if let Some(a) = call.as_ref().and_then(|c| c.audio.as_ref()) {
                a.set_paused(local_hold || remote_hold);
            }
            if let Some(c) = call.as_mut() {
                c.last_media = None;
            }
        }
        CallEvent::GlareMerged { dropped, kept } => {
            report!(
                json!({"event": "glare", "dropped": call_id(dropped), "call": call_id(kept)}),
                "both called at once: our call {dropped:?} merged into {kept:?}"
            );
            if let Some(c) = call.as_mut() {
                c.id = kept;
            }
        }
        CallEvent::RejectedBusy { call: id, user } => report!(
            json!({"event": "missed_busy", "call": call_id(id), "user": user.as_str()}),
            "{user} called while we were busy"
        ),
        CallEvent::Ended { call: id, reason } => {
            let what = match reason {
                EndReason::HungUp { local: true } => "hung up".to_string(),
                EndReason::HungUp { local: false } => "the peer hung up".to_string(),
                other => format!("{other:?}"),
            };
            let frames = call.as_ref().map_or(0, |c| c.frames_in);
            let code = match reason {
                EndReason::HungUp { local: true } => "hung_up",
                EndReason::HungUp { local: false } => "peer_hung_up",
                EndReason::Declined { .. } => "declined",
                EndReason::Busy => "busy",
                EndReason::Cancelled { .. } => "cancelled",
                EndReason::Missed => "missed",
                EndReason::PeerVanished => "peer_vanished",
                EndReason::AnsweredElsewhere => "answered_elsewhere",
            };
            report!(
                json!({"event": "call_state", "call": call_id(id), "state": "ended",
                       "reason": code, "frames_in": frames}),
                "call ended: {what} ({frames} media frames received)"
            );
            if let Some(c) = call.take() {
                if let Some(a) = c.audio {
                    let st = a.stop();
                    let q = st.receiver.quality;
                    report!(
                        json!({"event": "call_audio", "call": call_id(id), "frames_sent": st.sender.sent,
                               "frames_received": st.receiver.jitter.received, "mos": q.mos,
                               "saved_to": args.audio_out.as_ref().map(|p| p.display().to_string())}),
                        "call audio: {} frames sent, {} received; estimated MOS {:.2}",
                        st.sender.sent,
                        st.receiver.jitter.received,
                        q.mos
                    );
                    if let (false, Some(p)) = (args.json, &args.audio_out) {
                        say!("what the other side sent is in {}", p.display());
                    }
                }
            }
            return true;
        }
    }
    false
}

/// Start the call's media: the WAV file or a 440 Hz tone in, the WAV file or nothing out.
pub(crate) fn start_audio(
    rt: RuntimeHandle<Node>,
    call: CallId,
    args: &ClientArgs,
) -> Result<CallAudio, String> {
    audio_for_call(
        rt,
        call,
        args.audio_in.as_deref(),
        args.audio_out.as_deref(),
        !args.no_devices,
    )
}

/// The media of `call` on the node behind `rt`, from `input` (a 16 kHz mono WAV file) or else
/// the default microphone (`devices`) or else a 440 Hz tone, to `output` (a WAV file) or else
/// the default speaker (`devices`) or else nowhere. A missing device is said, not fatal.
pub(crate) fn audio_for_call(
    rt: RuntimeHandle<Node>,
    call: CallId,
    input: Option<&std::path::Path>,
    output: Option<&std::path::Path>,
    devices: bool,
) -> Result<CallAudio, String> {
    let cfg = CallAudioConfig::default();
    let rate = cfg.sender.codec.rate.hz();
    let source: Box<dyn AudioSource + Send> = match input {
        Some(p) => Box::new(WavSource::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None if devices => {
            match CaptureDevice::open(None, rate) {
                Ok(d) => {
                    say!("audio in: {}", d.name());
                    Box::new(d)
                }
                Err(e) => {
                    say!("no microphone ({e}): sending a 440 Hz test tone (--audio-in sends a WAV file)");
                    Box::new(Tone::new(rate, 440.0, 0.25))
                }
            }
        }
        None => Box::new(Tone::new(rate, 440.0, 0.25)),
    };
    let sink: Box<dyn AudioSink + Send> = match output {
        Some(p) => Box::new(WavSink::create(p, rate).map_err(|e| format!("{}: {e}", p.display()))?),
        None if devices => match PlaybackDevice::open(None, rate) {
            Ok(d) => {
                say!("audio out: {}", d.name());
                Box::new(d)
            }
            Err(e) => {
                say!("no speaker ({e}): what arrives is not played (--audio-out saves it)");
                Box::new(Discard(rate))
            }
        },
        None => Box::new(Discard(rate)),
    };
    let send = Box::new(move |frame: &[u8]| {
        let frame = frame.to_vec();
        rt.command(move |n, now| n.send_media(now, call, &frame).is_ok())
            .unwrap_or(false)
    });
    CallAudio::start(cfg, source, sink, send).map_err(|e| e.to_string())
}

/// A sink that drops what it is given.
struct Discard(u32);

impl AudioSink for Discard {
    fn sample_rate(&self) -> u32 {
        self.0
    }
    fn write_frame(&mut self, _frame: &[i16]) -> Result<(), natter_media::audio::AudioError> {
        Ok(())
    }
}

/// One line from standard input (words, or a JSON command in JSON mode); returns false on
/// `quit`.
fn command(node: &Started, line: &str, call: &mut Option<CallView>, json: bool) -> bool {
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
                Ok((cmd, user))
            })
    } else {
        let mut words = line.split_whitespace();
        match words.next() {
            None => return true,
            Some(w) => Ok((w.to_string(), words.next().map(str::to_string))),
        }
    };
    let current = call.as_ref().map(|c| c.id);
    let r: Result<(), String> = match parsed {
        Err(e) => Err(e),
        Ok((cmd, arg)) => match (cmd.as_str(), arg) {
            ("quit", _) => return false,
            ("help", _) => {
                say!("{HELP}");
                Ok(())
            }
            ("call", Some(user)) => match UserName::parse(&user) {
                Ok(u) => {
                    report!(
                        json!({"event": "dialing", "user": u.as_str()}),
                        "dialing {u}"
                    );
                    *call = Some(CallView::new(CallId([0; 16])));
                    node.rt.command(move |n, now| n.call(now, u));
                    Ok(())
                }
                Err(e) => Err(format!("{user}: {e}")),
            },
            ("search", Some(user)) => match UserName::parse(&user) {
                Ok(u) => {
                    node.rt.command(move |n, now| n.search(now, u));
                    Ok(())
                }
                Err(e) => Err(format!("{user}: {e}")),
            },
            ("call" | "search", None) => Err(format!("{cmd} needs a user")),
            (c @ ("mute" | "unmute"), _) => match call.as_ref().and_then(|c| c.audio.as_ref()) {
                Some(a) => {
                    let muted = c == "mute";
                    a.set_paused(muted);
                    report!(json!({"event": "muted", "muted": muted}), "muted: {muted}");
                    Ok(())
                }
                None => Err("no call".into()),
            },
            (c @ ("answer" | "decline" | "hangup" | "hold" | "resume"), _) => match current {
                None => Err("no call".into()),
                Some(id) => {
                    let c = c.to_string();
                    node.rt
                        .command(move |n, now| match c.as_str() {
                            "answer" => n.answer(now, id),
                            "decline" => n.decline(now, id),
                            "hangup" => n.hang_up(now, id),
                            "hold" => n.hold(now, id),
                            _ => n.resume(now, id),
                        })
                        .map_err(|e| e.to_string())
                }
            },
            ("status", _) => {
                let (attach, nat, sn, current) = node.rt.command(|n, now| {
                    (
                        n.describe_attach(now),
                        n.nat().map(|r| r.nat.describe().to_string()),
                        n.attached()
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>(),
                        n.calls().current(),
                    )
                });
                report!(
                    json!({"event": "status", "attach": attach, "super_nodes": sn,
                           "nat": nat, "call": current.map(call_id)}),
                    "{attach}; NAT {}; call {current:?}",
                    nat.as_deref().unwrap_or("unknown")
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

/// What `help` prints.
const HELP: &str = "commands:
  call USER       call every online device of USER
  answer          answer the call that rings here
  decline         decline it
  hangup          hang up (or cancel a call not answered yet)
  hold, resume    put the call on hold and back
  mute, unmute    stop and restart sending audio
  search USER     look USER up in the global index
  status          how this node is joined, its NAT type, the current call
  quit            leave (Ctrl-C too)";

/// A call id as events show it: 32 hex digits.
fn call_id(id: CallId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON event of a node event the client does not handle itself (joining, NAT, search).
fn event_json(e: &NodeEvent) -> Option<serde_json::Value> {
    Some(match e {
        NodeEvent::Attach(AttachEvent::Attached {
            super_node,
            transport,
            reflexive,
            ..
        }) => json!({"event": "attached", "super_node": super_node.to_string(),
                     "transport": format!("{transport:?}").to_lowercase(),
                     "reflexive": reflexive.to_string()}),
        NodeEvent::Attach(AttachEvent::Detached { super_node }) => {
            json!({"event": "detached", "super_node": super_node.to_string()})
        }
        NodeEvent::Attach(AttachEvent::NoSuperNode) => json!({"event": "no_super_node"}),
        NodeEvent::Nat(r) => json!({"event": "nat", "type": r.nat.describe(),
                                    "mapped": r.mapped.map(|m| m.to_string())}),
        NodeEvent::Search { outcome, .. } => {
            let (result, devices) = match &outcome.result {
                SearchResult::Found(records) => (
                    "found",
                    records
                        .iter()
                        .map(|r| json!({"device": r.device().to_string(), "online": r.online,
                                        "last_seen": r.timestamp.0,
                                        "super_nodes": r.super_nodes.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
                        .collect::<Vec<_>>(),
                ),
                SearchResult::NotFound => ("not_found", vec![]),
                SearchResult::Unavailable => ("unavailable", vec![]),
            };
            json!({"event": "search_result", "user": outcome.user.as_str(), "result": result,
                   "devices": devices, "hops": outcome.hops,
                   "ms": outcome.elapsed.as_secs_f64() * 1000.0})
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
