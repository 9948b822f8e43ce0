//! Real ALSA devices without a sound card, for demos and tests of audio devices (`natter
//! demo`, the device tests): ALSA's `file` plugin over its `null` device, defined in a private configuration that a process (or a child
//! process) reads through `ALSA_CONFIG_PATH`; a [`Speaker`] that plays such a device at a
//! real speaker's pace, and a [`Microphone`] that feeds one at a real microphone's pace.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The system's ALSA configuration, to name before a private one in `ALSA_CONFIG_PATH`.
pub const ALSA_CONF: &str = "/usr/share/alsa/alsa.conf";

/// An ALSA playback device `name` that writes raw samples into `file` (a [`Speaker`]'s FIFO,
/// or a plain file for a device only listed). Self-contained: it works in a configuration of
/// its own, without the system's.
pub fn sink(name: &str, file: &Path) -> String {
    format!(
        r#"pcm.{name} {{
    type file
    slave.pcm {{ type null }}
    file "{}"
    format "raw"
    hint {{ show on description "Natter test {name}" }}
}}
"#,
        file.display()
    )
}

/// A FIFO that an ALSA `file` device writes into, read at the pace of a real speaker (ALSA's
/// `null` device has no clock: without a paced reader it would write as fast as it can). It
/// counts the samples that are clearly not silence; ALSA closes and reopens the file as cpal
/// probes the device, so the reader opens it again after each end.
pub struct Speaker {
    loud: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    fifo: std::path::PathBuf,
}

impl Speaker {
    /// Make the FIFO `fifo` and start reading it.
    ///
    /// # Panics
    /// When `mkfifo` fails (a fixture: the test cannot go on).
    pub fn new(fifo: &Path) -> Self {
        Self::try_new(fifo).unwrap_or_else(|e| panic!("mkfifo {}: {e}", fifo.display()))
    }

    /// [`Speaker::new`], with the failure to make the FIFO as an error.
    ///
    /// # Errors
    /// `mkfifo` could not be run or failed.
    pub fn try_new(fifo: &Path) -> std::io::Result<Self> {
        let made = std::process::Command::new("mkfifo").arg(fifo).status()?;
        if !made.success() {
            return Err(std::io::Error::other(format!("mkfifo exited with {made}")));
        }
        let (loud, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (l, st, path) = (loud.clone(), stop.clone(), fifo.to_path_buf());
        std::thread::spawn(move || {
            // 16 kHz mono 32-bit float (cpal's choice here): 64,000 bytes a second.
            const RATE: f64 = 64_000.0;
            let mut buf = [0u8; 1280];
            while !st.load(Ordering::SeqCst) {
                let Ok(mut f) = std::fs::File::open(&path) else {
                    return;
                };
                let (start, mut read) = (Instant::now(), 0usize);
                loop {
                    let due = (start.elapsed().as_secs_f64() * RATE) as usize;
                    if due < read + 1280 {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    match f.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            read += n;

                            let loud = buf[..n - n % 4]
                                .chunks_exact(4)
                                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                .filter(|v| v.is_finite() && v.abs() > 0.05 && v.abs() <= 1.0)
                                .count();
                            l.fetch_add(loud, Ordering::SeqCst);
                        }
                    }
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        });
        Ok(Self {
            loud,
            stop,
            fifo: fifo.to_path_buf(),
        })
    }

    /// Samples played so far that were clearly not silence.
    pub fn loud(&self) -> usize {
        self.loud.load(Ordering::SeqCst)
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A reader waiting in open() for a writer that never comes: be that writer for a
        // moment (non-blocking, so nothing waits here), and it sees the end and stops.
        let _ = nonblocking(&self.fifo, true);
    }
}

/// Open the FIFO `path` without blocking, for writing or reading.
fn nonblocking(path: &Path, write: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    /// O_NONBLOCK (Linux).
    const O_NONBLOCK: i32 = 0o4000;
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(O_NONBLOCK)
        .open(path)
}

/// An ALSA capture device `name` that reads raw samples from `infile` (a [`Microphone`]'s
/// FIFO). Self-contained, as [`sink`].
pub fn source(name: &str, infile: &Path) -> String {
    format!(
        r#"pcm.{name} {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile "{}"
    format "raw"
    hint {{ show on description "Natter test {name}" }}
}}
"#,
        infile.display()
    )
}

/// A FIFO that an ALSA capture device ([`source`]) reads, fed at the pace of a real
/// microphone (16 kHz mono 32-bit float): a 1 kHz tone when `loud`, else silence. ALSA opens
/// and closes the file as cpal probes the device, so the writer opens it again after each end.
pub struct Microphone {
    stop: Arc<AtomicBool>,
    fifo: std::path::PathBuf,
}

impl Microphone {
    /// Make the FIFO `fifo` and start feeding it.
    ///
    /// # Errors
    /// `mkfifo` could not be run or failed.
    pub fn try_new(fifo: &Path, loud: bool) -> std::io::Result<Self> {
        let made = std::process::Command::new("mkfifo").arg(fifo).status()?;
        if !made.success() {
            return Err(std::io::Error::other(format!("mkfifo exited with {made}")));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (st, path) = (stop.clone(), fifo.to_path_buf());
        std::thread::spawn(move || {
            const RATE: f64 = 16_000.0;
            let mut phase = 0u64;
            while !st.load(Ordering::SeqCst) {
                let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) else {
                    return;
                };
                let (start, mut written) = (Instant::now(), 0u64);
                loop {
                    if st.load(Ordering::SeqCst) {
                        return;
                    }
                    // Keep 40 ms ahead of the clock, as a sound card's buffer does.
                    let due = ((start.elapsed().as_secs_f64() + 0.04) * RATE) as u64;
                    if written >= due {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    let frame: Vec<u8> = (0..320)
                        .flat_map(|i| {
                            let t = (phase + i) as f32 / RATE as f32;
                            let v = if loud {
                                0.5 * (std::f32::consts::TAU * 1000.0 * t).sin()
                            } else {
                                0.0
                            };
                            v.to_le_bytes()
                        })
                        .collect();
                    if f.write_all(&frame).is_err() {
                        break;
                    }
                    phase += 320;
                    written += 320;
                }
            }
        });
        Ok(Self {
            stop,
            fifo: fifo.to_path_buf(),
        })
    }
}

impl Drop for Microphone {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A writer waiting in open() for a reader: be that reader for a moment.
        let _ = nonblocking(&self.fifo, false);
    }
}
