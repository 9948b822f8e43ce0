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
use natter_core::identity::UserName;
use natter_core::wire::message::CallId;
use natter_media::audio::synth::Tone;
use natter_media::audio::wav::{WavSink, WavSource};
use natter_media::audio::{AudioSink, AudioSource};
use natter_media::call::{CallAudio, CallAudioConfig};
use natter_overlay::node::{DialOutcome, Node, NodeEvent, RolePolicy};
use natter_transport::runtime::RuntimeHandle;

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
    /// Send this WAV file (16 kHz mono) in calls instead of a 440 Hz test tone.
    #[arg(long, value_name = "WAV")]
    audio_in: Option<std::path::PathBuf>,
    /// Save what the other side sends in a call to this WAV file.
    #[arg(long, value_name = "WAV")]
    audio_out: Option<std::path::PathBuf>,
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
    let mut node = Started::start(&args.node, Some(RolePolicy::Forbid))?;
    let lines = stdin_lines();
    let begun = Instant::now();
    let mut call: Option<CallView> = None;
    let mut ever_connected = false;
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
                say!("timeout: no call connected within {t} s");
                return Ok(1);
            }
        }
        if let Some(user) = dial.take() {
            if node.joined() {
                say!("dialing {user}");
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
            if !command(&node, line.trim(), &mut call) {
                return Ok(0);
            }
        }
        // Hang up on schedule.
        if let (Some(after), Some(c)) = (args.hangup_after, call.as_ref()) {
            if c.connected
                .is_some_and(|t| t.elapsed().as_secs_f64() >= after)
            {
                let id = c.id;
                say!("hanging up");
                let _ = node.rt.command(move |n, now| n.hang_up(now, id));
            }
        }
        let Ok(e) = node.rt.events().recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        match e {
            NodeEvent::Dial { outcome, .. } => match outcome {
                DialOutcome::Calling(id) => {
                    say!("calling (call {id:?})");
                    if let Some(c) = call.as_mut() {
                        c.id = id;
                    } else {
                        call = Some(CallView::new(id));
                    }
                }
                DialOutcome::Failed(e) => {
                    say!("dial failed: {e}");
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
                kind, reason, path, ..
            } => say!("call path {} ({reason:?}) {path:?}", kind.name()),
            NodeEvent::CallQuality { quality, .. } => {
                if let Some(a) = call.as_ref().and_then(|c| c.audio.as_ref()) {
                    a.on_report(quality.loss_out, quality.jitter_ms, quality.rtt);
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
            NodeEvent::CallMedia { data, .. } => {
                if let Some(c) = call.as_mut() {
                    if let Some(a) = &c.audio {
                        a.receive(&data);
                    }
                    c.frames_in += 1;
                    let now = Instant::now();
                    if let Some(gap) = c.last_media.map(|t| now - t) {
                        // An interruption (a path switch, a loss burst) is worth a line.
                        if gap >= Duration::from_millis(100) {
                            say!(
                                "media resumed after a gap of {:.0} ms",
                                gap.as_secs_f64() * 1000.0
                            );
                        }
                    }
                    c.last_media = Some(now);
                    if c.first_media.is_none() {
                        c.first_media = Some(Instant::now());
                        say!(
                            "first media received {:.1} ms after the call started",
                            c.started.elapsed().as_secs_f64() * 1000.0
                        );
                    }
                }
            }
            other => describe(&other),
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
        CallEvent::Incoming { call: id, user, .. } => {
            say!("incoming call from {user} (call {id:?})");
            *call = Some(CallView::new(id));
            if args.auto_answer {
                let r = node.rt.command(move |n, now| n.answer(now, id));
                say!("answering: {r:?}");
            }
        }
        CallEvent::Ringing { device, .. } => say!("ringing on device {device}"),
        CallEvent::Connected {
            call: id, device, ..
        } => {
            *ever_connected = true;
            let c = call.get_or_insert_with(|| CallView::new(id));
            c.id = id;
            c.connected = Some(Instant::now());
            say!(
                "call connected to device {device}, signalling took {:.1} ms",
                c.started.elapsed().as_secs_f64() * 1000.0
            );
            match start_audio(node.rt.handle(), id, args) {
                Ok(a) => c.audio = Some(a),
                Err(e) => say!("audio: {e}"),
            }
        }
        CallEvent::HoldChanged {
            local_hold,
            remote_hold,
            ..
        } => {
            say!("hold: local {local_hold}, remote {remote_hold}");
            // No media while held (the path stays watched: about 3 probes a second).
            if let Some(a) = call.as_ref().and_then(|c| c.audio.as_ref()) {
                a.set_paused(local_hold || remote_hold);
            }
            if let Some(c) = call.as_mut() {
                c.last_media = None;
            }
        }
        CallEvent::GlareMerged { dropped, kept } => {
            say!("both called at once: our call {dropped:?} merged into {kept:?}");
            if let Some(c) = call.as_mut() {
                c.id = kept;
            }
        }
        CallEvent::RejectedBusy { user, .. } => say!("{user} called while we were busy"),
        CallEvent::Ended { reason, .. } => {
            let what = match reason {
                EndReason::HungUp { local: true } => "hung up".to_string(),
                EndReason::HungUp { local: false } => "the peer hung up".to_string(),
                other => format!("{other:?}"),
            };
            let frames = call.as_ref().map_or(0, |c| c.frames_in);
            say!("call ended: {what} ({frames} media frames received)");
            if let Some(c) = call.take() {
                if let Some(a) = c.audio {
                    let st = a.stop();
                    let q = st.receiver.quality;
                    say!(
                        "call audio: {} frames sent, {} received; estimated MOS {:.2}",
                        st.sender.sent,
                        st.receiver.jitter.received,
                        q.mos
                    );
                    if let Some(p) = &args.audio_out {
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
    )
}

/// The media of `call` on the node behind `rt`, from `input` (a 16 kHz mono WAV file; a
/// 440 Hz tone when none) to `output` (a WAV file; discarded when none).
pub(crate) fn audio_for_call(
    rt: RuntimeHandle<Node>,
    call: CallId,
    input: Option<&std::path::Path>,
    output: Option<&std::path::Path>,
) -> Result<CallAudio, String> {
    let cfg = CallAudioConfig::default();
    let rate = cfg.sender.codec.rate.hz();
    let source: Box<dyn AudioSource + Send> = match input {
        Some(p) => Box::new(WavSource::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => Box::new(Tone::new(rate, 440.0, 0.25)),
    };
    let sink: Box<dyn AudioSink + Send> = match output {
        Some(p) => Box::new(WavSink::create(p, rate).map_err(|e| format!("{}: {e}", p.display()))?),
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

/// One line from standard input; returns false on `quit`.
fn command(node: &Started, line: &str, call: &mut Option<CallView>) -> bool {
    let mut words = line.split_whitespace();
    let current = call.as_ref().map(|c| c.id);
    let r: Result<(), String> = match (words.next(), words.next()) {
        (None, _) => Ok(()),
        (Some("quit"), _) => return false,
        (Some("call"), Some(user)) => match UserName::parse(user) {
            Ok(u) => {
                say!("dialing {u}");
                *call = Some(CallView::new(CallId([0; 16])));
                node.rt.command(move |n, now| n.call(now, u));
                Ok(())
            }
            Err(e) => Err(format!("{user}: {e}")),
        },
        (Some("search"), Some(user)) => match UserName::parse(user) {
            Ok(u) => {
                node.rt.command(move |n, now| n.search(now, u));
                Ok(())
            }
            Err(e) => Err(format!("{user}: {e}")),
        },
        (Some(cmd @ ("answer" | "decline" | "hangup" | "hold" | "resume")), _) => {
            match current {
                None => Err("no call".into()),
                Some(id) => {
                    let cmd = cmd.to_string();
                    node.rt
                        .command(move |n, now| match cmd.as_str() {
                            "answer" => n.answer(now, id),
                            "decline" => n.decline(now, id),
                            "hangup" => n.hang_up(now, id),
                            "hold" => n.hold(now, id),
                            _ => n.resume(now, id),
                        })
                        .map_err(|e| e.to_string())
                }
            }
        }
        (Some("status"), _) => {
            let s = node.rt.command(|n, now| {
                format!(
                    "{}; NAT {}; call {:?}",
                    n.describe_attach(now),
                    n.nat().map_or("unknown", |r| r.nat.describe()),
                    n.calls().current()
                )
            });
            say!("{s}");
            Ok(())
        }
        (Some(other), _) => Err(format!(
            "unknown command {other:?} (call USER, answer, decline, hangup, hold, resume, search USER, status, quit)"
        )),
    };
    if let Err(e) = r {
        say!("error: {e}");
    }
    true
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
