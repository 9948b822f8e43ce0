//! The library's logs, delivered to the application: `natter_set_log_callback`.
//!
//! Natter logs through `tracing`. The first `natter_set_log_callback` (or the first client
//! created while the `NATTER_LOG` environment variable is set) installs one process-wide
//! subscriber: lines at or above the chosen level go into a bounded queue (dropped when it is
//! full), and a thread of their own, "natter-log", hands them to the application's callback
//! one at a time; with `NATTER_LOG` (e.g. `NATTER_LOG=info`) they are also printed on standard
//! error. With neither, nothing is installed and nothing is printed.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::boundary::{self, lock};
use crate::result::NatterResult;

/// How much a log line matters (`natter_set_log_callback`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NatterLogLevel {
    /// Nothing (switches the callback off).
    NatterLogOff = 0,
    /// Something failed that the application may want to know about.
    NatterLogError = 1,
    /// Something unexpected that Natter worked around, or a request refused.
    NatterLogWarn = 2,
    /// Notable events of the node and the servers.
    NatterLogInfo = 3,
    /// Details for debugging.
    NatterLogDebug = 4,
    /// Everything Natter logs.
    NatterLogTrace = 5,
}

/// Receives one log line: its level (a `NatterLogLevel`), its target (the part of Natter it
/// comes from, e.g. `natter_ffi::client`) and its message, both NUL-terminated UTF-8 valid
/// only during the call. Called on the library's "natter-log" thread, one line at a time; it
/// may call any Natter function (what those log meanwhile is not delivered).
pub type NatterLogCallback = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: u32,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// The callback, its data and its level.
#[derive(Clone, Copy)]
struct Sink {
    callback: unsafe extern "C" fn(*mut c_void, u32, *const c_char, *const c_char),
    user_data: *mut c_void,
}

// SAFETY: the pointer is the application's, handed back to its own callback only, on the
// natter-log thread; the application promises (natter_set_log_callback's contract) that
// callback and data may be used from that thread.
unsafe impl Send for Sink {}
// SAFETY: as above: the sink is only read (copied) by the natter-log thread.
unsafe impl Sync for Sink {}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// The callback's level (0: none): read for every log line, so an atomic.
static MAX: AtomicU32 = AtomicU32::new(0);
/// Lines waiting for the natter-log thread (level, target, message).
static QUEUE: Mutex<VecDeque<(u32, String, String)>> = Mutex::new(VecDeque::new());
static QUEUED: Condvar = Condvar::new();
/// Held while the callback runs: replacing it waits until the old one has returned.
static DELIVERING: Mutex<()> = Mutex::new(());
/// Lines dropped because the queue was full.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Most lines waiting for delivery.
const MAX_QUEUED: usize = 1024;

thread_local! {
    /// This is the natter-log thread: what it logs is not delivered (no loop).
    static LOG_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn level_number(level: &Level) -> u32 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        _ => 5,
    }
}

/// Collects an event's message and fields as one line (without the `log` crate's
/// bookkeeping fields).
#[derive(Default)]
struct Line(String);

impl Line {
    fn field(&mut self, field: &Field, value: &dyn std::fmt::Display) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value}");
        } else if !field.name().starts_with("log.") {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field, &format_args!("{value:?}"));
    }
}

/// The layer that queues lines for the application's callback.
struct CallbackLayer;

impl<S: Subscriber> Layer<S> for CallbackLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = level_number(event.metadata().level());
        if level > MAX.load(Ordering::Relaxed) || LOG_THREAD.with(Cell::get) {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let mut q = lock(&QUEUE);
        if q.len() >= MAX_QUEUED {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back((
            level,
            event.metadata().target().to_string(),
            line.0.trim_start().to_string(),
        ));
        QUEUED.notify_one();
    }
}

/// The natter-log thread: hand queued lines to the callback, one at a time.
fn deliver() {
    LOG_THREAD.with(|t| t.set(true));
    let clean = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
    loop {
        let (level, target, message) = {
            let mut q = lock(&QUEUE);
            loop {
                if let Some(line) = q.pop_front() {
                    break line;
                }
                q = QUEUED.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let _delivering = lock(&DELIVERING);
        let Some(sink) = *boundary::lock_read(&SINK) else {
            continue;
        };
        if level > MAX.load(Ordering::Relaxed) {
            continue;
        }
        let (target, message) = (clean(&target), clean(&message));
        // SAFETY: the callback is the application's (non-NULL, checked when set), called on
        // this thread as its contract allows, with its own user_data and two NUL-terminated
        // strings that live until it returns.
        unsafe { (sink.callback)(sink.user_data, level, target.as_ptr(), message.as_ptr()) };
    }
}

/// Install the process's subscriber, once: the callback layer (each line's level checked
/// against an atomic first), and standard error when `NATTER_LOG` is set. With neither a
/// callback nor `NATTER_LOG` (`force` false), nothing is installed and logging costs nothing.
pub(crate) fn init(force: bool) {
    quiet_alsa();
    static ONCE: Once = Once::new();
    let stderr_filter = std::env::var("NATTER_LOG").ok();
    if !force && stderr_filter.is_none() {
        return;
    }
    ONCE.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("natter-log".into())
            .spawn(deliver);
        let stderr = stderr_filter.map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let callback = CallbackLayer.with_filter(tracing_subscriber::filter::filter_fn(|m| {
            level_number(m.level()) <= MAX.load(Ordering::Relaxed)
        }));
        let _ = tracing_subscriber::registry()
            .with(callback)
            .with(stderr)
            .try_init();
    });
}

/// Deliver the library's log lines at `max_level` and above (a `NatterLogLevel`:
/// `NATTER_LOG_OFF` or a NULL callback switches delivery off) to `callback` with
/// `user_data`, for the whole process, on the library's "natter-log" thread. Replaces any
/// previous callback: when this returns, the previous one is not running and will not be
/// called again (unless this is called from the callback itself), so its `user_data` may be
/// released. Lines come through a queue of 1,024; more are dropped. Nothing is printed on the
/// application's standard error unless `NATTER_LOG` is set in the environment.
///
/// Returns `NATTER_INVALID_ARGUMENT` for a level above `NATTER_LOG_TRACE`. Safe to call from
/// any thread, the callback included.
///
/// # Safety
/// `callback` must be callable from the natter-log thread, with `user_data`, until it is
/// replaced.
#[no_mangle]
pub unsafe extern "C" fn natter_set_log_callback(
    callback: NatterLogCallback,
    user_data: *mut c_void,
    max_level: u32,
) -> NatterResult {
    boundary::result(|| {
        if max_level > NatterLogLevel::NatterLogTrace as u32 {
            return Err(NatterResult::NatterInvalidArgument);
        }
        init(true);
        let sink = callback.filter(|_| max_level > 0).map(|callback| Sink {
            callback,
            user_data,
        });
        // Wait for a delivery in progress (not from the callback itself: it holds the lock).
        let _delivering = (!LOG_THREAD.with(Cell::get)).then(|| lock(&DELIVERING));
        MAX.store(
            if sink.is_some() { max_level } else { 0 },
            Ordering::Relaxed,
        );
        *boundary::lock_write(&SINK) = sink;
        if sink.is_none() {
            lock(&QUEUE).clear();
        }
        // Events at levels nobody listens to are skipped cheaply once this is known.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}

#[cfg(target_os = "linux")]
extern "C" {
    /// src/alsa_log.c: route ALSA's error messages to `sink`.
    fn natter_internal_alsa_quiet(sink: unsafe extern "C" fn(line: *const c_char));
}

/// One of ALSA's error messages, as src/alsa_log.c formatted it: into the log (target
/// `alsa`, level debug: in normal operation they are noise, such as a configuration naming a
/// card 0 that does not exist; real failures come back as errors of their own).
#[cfg(target_os = "linux")]
unsafe extern "C" fn alsa_line(line: *const c_char) {
    if line.is_null() {
        return;
    }
    // SAFETY: alsa_log.c passes a NUL-terminated buffer that lives for this call.
    let text = unsafe { std::ffi::CStr::from_ptr(line) }.to_string_lossy();
    tracing::debug!(target: "alsa", "{text}");
}

/// Send ALSA's messages to the log rather than the application's standard error (once per
/// process, at the first client or device listing). ALSA's handler is process-wide: an
/// application with its own sets it again after that.
pub(crate) fn quiet_alsa() {
    #[cfg(target_os = "linux")]
    {
        static ONCE: Once = Once::new();
        // SAFETY: natter_internal_alsa_quiet stores the function pointer and installs a
        // handler with ALSA's exact (variadic) signature, defined in C; alsa_line has the
        // signature the C side declares and never unwinds (to_string_lossy and tracing do
        // not panic on any input).
        ONCE.call_once(|| unsafe { natter_internal_alsa_quiet(alsa_line) });
    }
}
