//! The library's logs, delivered to the application: `natter_set_log_callback`.
//!
//! Natter logs through `tracing`. The first client created (or the first call of
//! `natter_set_log_callback`) installs one process-wide subscriber that hands every event at or
//! above the chosen level to the application's callback, and also prints to standard error
//! when the `NATTER_LOG` environment variable asks for it (e.g. `NATTER_LOG=info`). Nothing is
//! printed otherwise.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::boundary;
use crate::result::NatterResult;

/// How much a log line matters (`natter_set_log_callback`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NatterLogLevel {
    /// Nothing (switches the callback off).
    NatterLogOff = 0,
    /// Something failed that the application may want to know about.
    NatterLogError = 1,
    /// Something unexpected that Natter worked around.
    NatterLogWarn = 2,
    /// Milestones: logins, links to super nodes, calls and their paths.
    NatterLogInfo = 3,
    /// Details for debugging.
    NatterLogDebug = 4,
    /// Everything, packet by packet.
    NatterLogTrace = 5,
}

/// Receives one log line: its level (a `NatterLogLevel`), its target (the part of Natter it
/// comes from, e.g. `natter_overlay::node`) and its message, both NUL-terminated UTF-8 valid
/// only during the call. Called from Natter's threads, one line at a time per thread; it must
/// not block for long. Natter functions may be called from it; what they log meanwhile is not
/// delivered (no recursion).
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
    max: u32,
}

// SAFETY: the pointer is the application's, handed back to its own callback only; the
// application promises (natter_set_log_callback's contract) that callback and data may be
// used from any thread.
unsafe impl Send for Sink {}
// SAFETY: as above: the sink is only read (copied) by the threads that log.
unsafe impl Sync for Sink {}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
/// The callback's level (0: none): read for every log line, so an atomic.
static MAX: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread is inside the callback: what it logs now is dropped.
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
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

/// Collects an event's message and fields as one line.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

/// The layer that hands events to the application's callback.
struct CallbackLayer;

impl<S: Subscriber> Layer<S> for CallbackLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if level_number(event.metadata().level()) > MAX.load(Ordering::Relaxed) {
            return;
        }
        let Some(sink) = *boundary::lock_read(&SINK) else {
            return;
        };
        let level = level_number(event.metadata().level());
        if level > sink.max || IN_CALLBACK.with(Cell::get) {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let clean = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let (target, message) = (clean(event.metadata().target()), clean(line.0.trim_start()));
        IN_CALLBACK.with(|c| c.set(true));
        // SAFETY: the callback is the application's (non-NULL, checked when set), called with
        // its own user_data and two NUL-terminated strings that live until it returns.
        unsafe { (sink.callback)(sink.user_data, level, target.as_ptr(), message.as_ptr()) };
        IN_CALLBACK.with(|c| c.set(false));
    }
}

/// Install the process's subscriber, once: the callback layer (each line's level checked
/// against an atomic first), and standard error when `NATTER_LOG` is set. With neither a
/// callback nor `NATTER_LOG` (`force` false), nothing is installed and logging costs nothing.
pub(crate) fn init(force: bool) {
    static ONCE: Once = Once::new();
    let stderr_filter = std::env::var("NATTER_LOG").ok();
    if !force && stderr_filter.is_none() {
        return;
    }
    ONCE.call_once(|| {
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
/// `user_data`, for the whole process. Replaces any previous callback; lines already being
/// delivered on other threads may still reach the previous one. Nothing is printed on the
/// application's standard error unless `NATTER_LOG` is set in the environment.
///
/// Returns `NATTER_INVALID_ARGUMENT` for a level above `NATTER_LOG_TRACE`. Safe to call from
/// any thread.
///
/// # Safety
/// `callback` must be callable from any thread, with `user_data`, until it is replaced (a
/// later call) and any line being delivered has returned.
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
            max: max_level,
        });
        MAX.store(sink.map_or(0, |s| s.max), Ordering::Relaxed);
        *boundary::lock_write(&SINK) = sink;
        // Events at levels nobody listens to are skipped cheaply once this is known.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    })
}
