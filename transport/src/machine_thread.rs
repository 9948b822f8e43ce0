//! The application's side of a sans-IO machine running on an event-loop thread of its own:
//! commands in (each runs on that thread with the machine), events out, and stopping the
//! thread. [`UdpNode`](crate::UdpNode) and [`Runtime`](crate::runtime::Runtime) differ only in
//! their loops; both are driven from here.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;
use natter_core::sansio::Machine;

/// Work for the loop thread: runs with the machine and the current instant.
pub(crate) type Command<M> = Box<dyn FnOnce(&mut M, Instant) + Send>;

/// What a loop gets from its owner: commands to run, where its machine's events go, and the
/// flag that tells it to stop.
pub(crate) struct LoopEnds<M: Machine> {
    pub(crate) commands: Receiver<Command<M>>,
    pub(crate) events: Sender<M::Event>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// Sends commands to a loop thread and wakes it. Cheap to clone.
pub(crate) struct Commands<M: Machine> {
    tx: Sender<Command<M>>,
    waker: Arc<Waker>,
}

impl<M: Machine> Clone for Commands<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<M: Machine + 'static> Commands<M> {
    /// Runs `f` on the loop thread with the machine and the current instant and returns its
    /// result; `None` when the thread has stopped.
    pub(crate) fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut M, Instant) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = mpsc::sync_channel(1);
        let cmd: Command<M> = Box::new(move |m, now| {
            let _ = tx.send(f(m, now));
        });
        self.tx.send(cmd).ok()?;
        let _ = self.waker.wake();
        rx.recv().ok()
    }
}

/// A loop thread and its ends: stopped (and joined) when dropped.
pub(crate) struct MachineThread<M: Machine, S> {
    commands: Commands<M>,
    events: Receiver<M::Event>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<S>>>,
}

impl<M, S> MachineThread<M, S>
where
    M: Machine + Send + 'static,
    M::Event: Send + 'static,
    S: Default + Send + 'static,
{
    /// Starts `run` on a thread called `name`; `waker` wakes its event loop.
    pub(crate) fn spawn(
        name: String,
        waker: Arc<Waker>,
        run: impl FnOnce(LoopEnds<M>) -> io::Result<S> + Send + 'static,
    ) -> io::Result<Self> {
        let (cmd_tx, cmd_rx) = mpsc::channel();
        let (ev_tx, ev_rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let ends = LoopEnds {
            commands: cmd_rx,
            events: ev_tx,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(ends))?;
        Ok(Self {
            commands: Commands { tx: cmd_tx, waker },
            events: ev_rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The command sender.
    pub(crate) fn commands(&self) -> &Commands<M> {
        &self.commands
    }

    /// The machine's events.
    pub(crate) fn events(&self) -> &Receiver<M::Event> {
        &self.events
    }

    /// Waits up to `timeout` for an event matching `pred`; the others are returned too, so
    /// nothing is lost.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&M::Event) -> bool,
    ) -> (Option<M::Event>, Vec<M::Event>) {
        let deadline = Instant::now() + timeout;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return (Some(e), others),
                Ok(e) => others.push(e),
                Err(_) => return (None, others),
            }
        }
    }

    /// Stops the thread and returns what its loop returned (default counters when it was
    /// already stopped).
    pub(crate) fn stop(&mut self) -> io::Result<S> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.waker.wake();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("event-loop thread panicked"))),
            None => Ok(S::default()),
        }
    }
}

impl<M: Machine, S> Drop for MachineThread<M, S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
