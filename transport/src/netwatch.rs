//! Watching the host's network addresses, so a node notices a new network (Wi-Fi to cable, a
//! new DHCP lease) and re-detects its NAT and re-attaches.
//!
//! [`local_addresses`] lists the host's addresses with a port; [`NetWatch`] polls them every
//! [`NetWatch::INTERVAL`] on its own thread and calls back on a change, so a change is noticed
//! within that interval (the node then re-attaches in well under a second).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The host's addresses (loopback excluded unless `bound` is a loopback address) with
/// `bound`'s port. A socket bound to a specific address has just that address.
pub fn local_addresses(bound: SocketAddr) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    let mut v: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .map(|ifs| {
            ifs.into_iter()
                .map(|i| i.ip())
                .filter(|ip: &IpAddr| !ip.is_loopback() && ip.is_ipv4() == bound.is_ipv4())
                .map(|ip| SocketAddr::new(ip, bound.port()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

/// Polls the host's addresses and reports changes.
pub struct NetWatch {
    /// Set to stop the thread, which waits on the condition variable between polls (so
    /// dropping a watcher does not wait out a poll interval).
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NetWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetWatch").finish_non_exhaustive()
    }
}

impl NetWatch {
    /// How often the addresses are read.
    pub const INTERVAL: Duration = Duration::from_secs(1);

    /// Watch the addresses of a socket bound to `bound`; `on_change` gets the new list.
    ///
    /// Every change made after this returns is reported, on the watcher's thread, within about
    /// one [`NetWatch::INTERVAL`].
    pub fn spawn(
        bound: SocketAddr,
        mut on_change: impl FnMut(Vec<SocketAddr>) + Send + 'static,
    ) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stop2 = stop.clone();
        // The baseline is read before returning, not on the new thread: a change made right
        // after `spawn` returns (the thread not yet scheduled) would otherwise be taken for the
        // baseline and never reported.
        let mut last = local_addresses(bound);
        let thread = std::thread::spawn(move || loop {
            {
                let (lock, cv) = &*stop2;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = cv
                    .wait_timeout_while(stopped, Self::INTERVAL, |s| !*s)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    return;
                }
            }
            let now = local_addresses(bound);
            if now != last {
                tracing::info!(?now, "local addresses changed");
                on_change(now.clone());
                last = now;
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NetWatch {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
