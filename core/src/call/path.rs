//! Connectivity and path selection for one call (see [`PathManager`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::TransitFloor;
use crate::endpoint::Path;
use crate::sansio::Destination;
use crate::wire::message::{
    CallId, Candidate, CandidateKind, MediaReportExt, Message, MAX_CANDIDATES,
};

/// Rebinds in a row ([`PathAction::Rebind`]) that found no direct path before this side waits
/// the stale NAT state out instead ([`PathConfig::stale_wait`]).
pub const MAX_REBINDS: u32 = 3;

/// Tuning of a [`PathManager`].
#[derive(Debug, Clone)]
pub struct PathConfig {
    /// IP TTL of the NAT-opening probes (default 2: through this side's NAT, dead at the next
    /// router).
    pub punch_ttl: u8,
    /// How often each candidate is checked while connecting (default 50 ms).
    pub check_interval: Duration,
    /// How long the fast checks last (default 3 s); afterwards candidates are re-checked every
    /// `recheck_interval`.
    pub check_phase: Duration,
    /// Re-check interval of the paths not in use (default 1 s).
    pub recheck_interval: Duration,
    /// How often each candidate is checked in a later fast phase (after a rebind, a change
    /// of candidates or a reopening) while another path carries the call (default 250 ms).
    /// Those probes share the narrowest link with the call's media: at `check_interval`,
    /// two candidates' probes came to about 25 kbit/s with their headers, more than the
    /// smallest stream (about 10 kbit/s), and on a link of 16 kbit/s they starved it, lost it
    /// its direct path again and again, and the call never fitted. ICE paced its checks to
    /// the media's rate for this reason (RFC 5245, section 16). A call's first checks keep
    /// `check_interval`, and so do later ones while nothing carries the call (decided as
    /// each check is scheduled: a check due when the carrying path fell silent comes at
    /// most this long after the previous one).
    pub carried_check_interval: Duration,
    /// After the first working direct path, wait this long for a better one before switching
    /// (default 100 ms).
    pub settle: Duration,
    /// Probe the active path after this long without hearing anything on it (default 200 ms).
    pub active_probe: Duration,
    /// Probe the active path this often while the call is on hold (default 333 ms: about 3
    /// packets a second).
    pub hold_probe: Duration,
    /// The active path is dead after this long without hearing anything (default 600 ms).
    pub dead_after: Duration,
    /// Switch when the loss the peer reports stays above this (default 0.25).
    pub max_loss: f64,
    /// Switch when the RTT stays above this (default 4 s).
    pub max_rtt: Duration,
    /// A direct path that failed wins back after this many answers in a row (default 3).
    pub recover_after: u32,
    /// After a switch for loss, the path left is not taken back for this long (default 30
    /// s; twice as long at each further switch for loss, up to 8 times as long: 4 min): a
    /// lossy route that answers probes would otherwise win back at once and lose again.
    /// When the loss follows the call to the new path, it is not the path's but a
    /// bottleneck both share (the access link): the call may go back to the path left, and
    /// loss switches no paths for as long. A new network or port forgets both.
    pub loss_hold: Duration,
    /// Candidate messages are repeated this often until the peer's have arrived (default 1 s).
    pub candidates_retransmit: Duration,
    /// Receiver reports go out this often (default 1 s).
    pub report_interval: Duration,
    /// After a mid-call change of candidates (a NAT rebinding or a new address on either
    /// side) whose checks found no direct path within `check_phase`, send nothing directly to
    /// the peer for this long, then open and check again (default 32 s); 3 times as long after
    /// a second failure, 6 times after more. A Linux NAT keeps the tracking entry left by an
    /// unsolicited packet (the moved side's media, sent to the peer before it knew it had
    /// moved) for 30 s after the last such packet, and until its garbage collector reaps it
    /// (measured: 18 s later; up to a minute) it pushes the peer's mapping towards the new
    /// address onto another port: the paths can only meet once both sides stayed quiet that
    /// long. The first wait is enough when the collector ran in time; the second (96 s)
    /// outlasts the entry that the failed first round left plus a whole minute of
    /// collector delay.
    pub stale_wait: Duration,
    /// After the direct path died (both sides on the relay), re-check it this long (default
    /// 10 s: a transient cut heals within it) before assuming a NAT restarted and the peer's
    /// re-checks keep a stale tracking entry alive in it; then both sides go quiet for
    /// `stale_wait` and open again, as after a change of candidates.
    pub dead_wait: Duration,
    /// On the controlling side, when the direct path died and has not come back after this
    /// long (default 1 s), or when a change of candidates found no direct pair within
    /// `check_phase`, move the call's direct paths to a fresh local UDP port
    /// ([`PathAction::Rebind`]): a new flow through both NATs, which no tracking entry left
    /// by the old one can clash with, so the call goes direct again as soon as the network
    /// allows rather than after `stale_wait`. `None` turns this off (both sides then only
    /// wait out the stale state).
    pub rebind_after: Option<Duration>,
    /// Look for a direct path at all (default true). Off, calls stay on the relay and this
    /// side never tells the peer its addresses: a privacy setting (the peer never learns
    /// where this device is), at the cost of the relay's latency and the super node's
    /// bandwidth.
    pub direct: bool,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            punch_ttl: 2,
            check_interval: Duration::from_millis(50),
            check_phase: Duration::from_secs(3),
            recheck_interval: Duration::from_secs(1),
            carried_check_interval: Duration::from_millis(250),
            settle: Duration::from_millis(100),
            active_probe: Duration::from_millis(200),
            hold_probe: Duration::from_millis(333),
            dead_after: Duration::from_millis(600),
            max_loss: 0.25,
            max_rtt: Duration::from_secs(4),
            recover_after: 3,
            loss_hold: Duration::from_secs(30),
            candidates_retransmit: Duration::from_secs(1),
            report_interval: Duration::from_secs(1),
            stale_wait: Duration::from_secs(32),
            dead_wait: Duration::from_secs(10),
            rebind_after: Some(Duration::from_secs(1)),
            direct: true,
        }
    }
}

/// What kind of path a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    /// Direct over UDP between addresses of one LAN (host candidates).
    DirectLan,
    /// Direct over UDP through the NATs (reflexive candidates, hole punching).
    Direct,
    /// Relayed by a super node, over UDP on this side.
    RelayUdp,
    /// Relayed by a super node, over TCP on this side.
    RelayTcp,
}

impl PathKind {
    /// The kind of `path` (`lan`: a direct path to a host candidate).
    pub fn of(path: &Path, lan: bool) -> PathKind {
        match path {
            Path::Direct { .. } if lan => PathKind::DirectLan,
            Path::Direct { .. } => PathKind::Direct,
            Path::Relayed {
                relay: Destination::Udp(_),
                ..
            } => PathKind::RelayUdp,
            Path::Relayed { .. } => PathKind::RelayTcp,
        }
    }

    /// A short name: `direct-lan`, `direct`, `relay-udp`, `relay-tcp`.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::DirectLan => "direct-lan",
            PathKind::Direct => "direct",
            PathKind::RelayUdp => "relay-udp",
            PathKind::RelayTcp => "relay-tcp",
        }
    }
}

/// Why the path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The first choice, or a better path started to work.
    Better,
    /// Nothing arrived on the active path for [`PathConfig::dead_after`].
    Dead,
    /// The peer reported loss above [`PathConfig::max_loss`].
    Loss,
    /// RTT above [`PathConfig::max_rtt`].
    Rtt,
    /// The peer moved the session (this side follows).
    Peer,
}

/// What the manager reports.
#[derive(Debug, Clone, PartialEq)]
pub enum PathEvent {
    /// The call's path is now `path`.
    Switched {
        /// The path.
        path: Path,
        /// Its kind.
        kind: PathKind,
        /// Why.
        reason: SwitchReason,
    },
    /// Quality of the call, about once a second.
    Stats(CallQuality),
}

/// Measured quality of a call.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CallQuality {
    /// Round-trip time on the active path.
    pub rtt: Option<Duration>,
    /// Fraction of the peer's media this side did not receive in the last interval.
    pub loss_in: f64,
    /// Fraction of this side's media the peer reported lost.
    pub loss_out: f64,
    /// Mean length, in frames, of the runs of this side's media the peer reported lost
    /// (`None` without loss, or from a peer that does not count runs).
    pub loss_run_out: Option<f64>,
    /// The mean queuing delay of this side's media at the peer, milliseconds (`None` from a
    /// peer without [`crate::crypto::Capabilities::REPORT_EXT`]).
    pub queue_ms_out: Option<f64>,
    /// The wire rate of this side's media the peer received, bit/s (likewise).
    pub recv_bps_out: Option<f64>,
    /// Interarrival jitter of received media, milliseconds.
    pub jitter_ms: f64,
    /// Media frames received in total.
    pub frames_in: u64,
    /// Current path kind.
    pub kind: Option<PathKind>,
}

/// What the owner must do.
#[derive(Debug, Clone, PartialEq)]
pub enum PathAction {
    /// Send this message on the session (its current path).
    Send(Message<'static>),
    /// Probe `path` on the session ([`crate::endpoint::Endpoint::probe`]) with this TTL.
    Probe {
        /// Where.
        path: Path,
        /// IP TTL (`None`: normal).
        ttl: Option<u8>,
    },
    /// Move the session to `path` ([`crate::endpoint::Endpoint::set_path`]).
    UsePath(Path),
    /// The relay path is in use and nothing arrived on it for half of
    /// [`PathConfig::dead_after`] (repeated every `dead_after` while that lasts): the owner
    /// checks that the relay still
    /// knows this side's address (a NAT that restarted gives it a new one) and, on the
    /// controlling side, replaces a relay that no longer answers
    /// ([`PathManager::replace_relay`]).
    RelayQuiet,
    /// Open a fresh local UDP port for the call's direct paths and learn its reflexive
    /// address (a STUN request to a super node from it), then hand both to
    /// [`PathManager::rebound`]; or report [`PathManager::rebind_failed`].
    Rebind,
    /// Tell the application.
    Event(PathEvent),
}

#[derive(Debug, Clone)]
struct Remote {
    addr: SocketAddr,
    /// A host candidate (same LAN).
    lan: bool,
    /// Answers in a row (reset when a check goes unanswered).
    streak: u32,
    /// Outstanding checks since the last answer.
    unanswered: u32,
    rtt: Option<Duration>,
    last_answer: Option<Instant>,
    /// Failed while in use: needs `recover_after` answers in a row to be chosen again.
    failed: bool,
}

/// Bytes a media frame costs on the wire besides itself: IPv4 (20), UDP (8) and the short
/// media envelope (26).
const WIRE_OVERHEAD: usize = 54;

/// Frames a late one may trail the highest sequence number by and still not count as lost
/// in a run (32 frames: 640 ms at 20 ms).
const RUN_WINDOW: usize = 32;

/// Receive statistics from media frame headers (RFC 3550 style).
#[derive(Debug, Clone, Default)]
struct RxStats {
    base: Option<u64>,
    highest: u64,
    received: u64,
    interval_expected_prior: u64,
    interval_received_prior: u64,
    /// Runs of lost frames since the last interval, counted as frames leave `window`.
    interval_runs: u64,
    /// Whether each of the last [`RUN_WINDOW`] sequence numbers up to `highest` arrived
    /// (front: the oldest): a frame's fate is settled only when it leaves, so a frame that
    /// jitter put behind a later one is not taken for a run of loss.
    window: VecDeque<bool>,
    /// Whether the last frame to leave `window` had arrived.
    settled_received: bool,
    /// The highest timestamp seen, unwrapped (2.5 ms ticks).
    ts_high: Option<u64>,
    /// The smallest transit lately, which queuing delay is measured from.
    floor: TransitFloor,
    /// Queuing delay summed over the frames of the interval, and their count.
    interval_queue: (f64, u64),
    /// Wire bytes received in the interval (frames plus [`WIRE_OVERHEAD`]).
    interval_bytes: u64,
    /// When the interval started, ms since the manager's epoch.
    interval_start_ms: Option<f64>,
    jitter: f64,
    last_transit: Option<f64>,
}

impl RxStats {
    /// A media frame with 16-bit sequence `seq` and timestamp `ts` (2.5 ms ticks) arrived at
    /// `arrival_ms`.
    fn on_frame(&mut self, seq: u16, ts: u16, arrival_ms: f64, len: usize) {
        self.interval_start_ms.get_or_insert(arrival_ms);
        self.interval_bytes += (len + WIRE_OVERHEAD) as u64;
        // Queuing delay: transit (on the unwrapped timestamp) above the smallest lately.
        let ts_ext = match self.ts_high {
            None => u64::from(ts) + 0x1_0000,
            Some(hi) => {
                let cand = (hi & !0xFFFF) | u64::from(ts);
                if cand + 0x8000 < hi {
                    cand + 0x1_0000
                } else if cand > hi + 0x8000 && cand >= 0x1_0000 {
                    cand - 0x1_0000
                } else {
                    cand
                }
            }
        };
        self.ts_high = Some(self.ts_high.map_or(ts_ext, |h| h.max(ts_ext)));
        let transit = arrival_ms - ts_ext as f64 * 2.5;
        self.interval_queue.0 += self.floor.queue_ms(arrival_ms, transit);
        self.interval_queue.1 += 1;
        match self.base {
            None => {
                self.base = Some(u64::from(seq));
                self.highest = u64::from(seq);
            }
            Some(_) => {
                // Extend against the highest seen (wraps every 65,536 frames).
                let hi = self.highest;
                let cand = (hi & !0xFFFF) | u64::from(seq);
                let ext = if cand + 0x8000 < hi {
                    cand + 0x1_0000
                } else if cand > hi + 0x8000 && cand >= 0x1_0000 {
                    cand - 0x1_0000
                } else {
                    cand
                };
                if ext > hi {
                    self.advance(ext - hi);
                    self.highest = ext;
                }
                // Mark it (too old for the window: its slot was settled as lost already).
                let back = self.highest - ext;
                if let Some(slot) = usize::try_from(back)
                    .ok()
                    .and_then(|b| (self.window.len()).checked_sub(1 + b))
                    .and_then(|i| self.window.get_mut(i))
                {
                    *slot = true;
                }
            }
        }
        if self.window.is_empty() {
            self.window.push_back(true);
            self.settled_received = true;
        }
        self.received += 1;
        // Jitter: the timestamp only orders frames within one wrap of 163 s, which is all
        // the difference of consecutive transits needs.
        let transit = arrival_ms - f64::from(ts) * 2.5;
        if let Some(prev) = self.last_transit {
            let mut d = (transit - prev).abs();
            // A timestamp wrap between two frames shows up as a jump of 163,840 ms.
            if d > 81_920.0 {
                d = (d - 163_840.0).abs();
            }
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// `n` new sequence numbers after the highest: slots for them (not yet arrived), and the
    /// oldest leave the window, a lost one after an arrived one starting a run.
    fn advance(&mut self, n: u64) {
        let fresh = n.min(RUN_WINDOW as u64) as usize;
        // Numbers beyond the window's length were skipped outright: one run of loss.
        if n > RUN_WINDOW as u64 {
            self.settle_all();
            if self.settled_received {
                self.interval_runs += 1;
            }
            self.settled_received = false;
        }
        for _ in 0..fresh {
            self.window.push_back(false);
            if self.window.len() > RUN_WINDOW {
                self.settle_front();
            }
        }
    }

    fn settle_front(&mut self) {
        if let Some(received) = self.window.pop_front() {
            if !received && self.settled_received {
                self.interval_runs += 1;
            }
            self.settled_received = received;
        }
    }

    fn settle_all(&mut self) {
        while !self.window.is_empty() {
            self.settle_front();
        }
    }

    /// Forget the transit minima (a hold, whose silence moved the sender's media clock
    /// against ours, or another path, with another transit): the queue is measured afresh.
    fn reset_queue(&mut self) {
        self.ts_high = None;
        self.floor.clear();
        self.interval_queue = (0.0, 0);
    }

    /// The mean queuing delay (ms) and the wire rate received (bit/s) since the last call,
    /// at `now_ms`.
    fn queue_interval(&mut self, now_ms: f64) -> (f64, f64) {
        let (sum, n) = std::mem::take(&mut self.interval_queue);
        let bytes = std::mem::take(&mut self.interval_bytes);
        let since = self.interval_start_ms.replace(now_ms).unwrap_or(now_ms);
        let queue = if n == 0 { 0.0 } else { sum / n as f64 };
        let secs = (now_ms - since) / 1000.0;
        let rate = if secs > 0.0 {
            bytes as f64 * 8.0 / secs
        } else {
            0.0
        };
        (queue, rate)
    }

    /// Expected frames, lost frames and runs of lost frames since the last call.
    fn interval(&mut self) -> (u64, u64, u64) {
        let Some(base) = self.base else {
            return (0, 0, 0);
        };
        let expected = self.highest - base + 1;
        let exp_i = expected - self.interval_expected_prior;
        let rec_i = self.received - self.interval_received_prior;
        self.interval_expected_prior = expected;
        self.interval_received_prior = self.received;
        let lost = exp_i.saturating_sub(rec_i);
        let runs = std::mem::take(&mut self.interval_runs).min(lost);
        (exp_i, lost, runs)
    }
}

/// The connectivity machine of one call on one session.
///
/// Connectivity and path selection for one call: ICE-like candidates, coordinated hole
/// punching, path choice, monitoring and switching, as a sans-IO machine.
///
/// A call starts on the end-to-end session the caller opened **through a super node's relay**
/// (signalling needs no direct path). [`PathManager`] then looks for something better and keeps
/// watching what it uses:
///
/// 1. **Candidates.** Each side sends [`Message::CallCandidates`]: its host addresses (same
///    LAN) and its server-reflexive address (what a super node saw), nothing when its UDP is
///    blocked.
/// 2. **Opening, then checking.** Two Linux masquerading NATs that punch at the same moment
///    fail: the first packet to reach a NAT leaves a conntrack entry that pushes the other
///    side's mapping onto a new port. So each side first sends *opening* probes with a low IP
///    TTL ([`PathConfig::punch_ttl`]): they create its own NAT's mapping towards the peer and
///    die in the network before the far NAT. It then says so (`opened: true`). Only when both
///    sides have opened do the real checks ([`Message::PathProbe`], normal TTL) start, and they
///    go through both NATs as replies of mappings that already exist. A check is answered on
///    the path it came by, so a peer behind a symmetric NAT that reaches a public or
///    full-cone peer from an unexpected port still gets its answer (and the answering side
///    learns that port as a peer-reflexive candidate).
/// 3. **Choice.** The controlling side (the caller) picks the best working path: a host
///    candidate (same LAN) before a reflexive one, lower RTT first, direct before the relay;
///    it moves the session there ([`PathAction::UsePath`]) and the other side follows when the
///    first packet arrives on it (the endpoint moves a session to where authenticated data
///    comes from).
/// 4. **Watching.** While a call is up the active path is probed when nothing else arrives,
///    3 times a second while on hold; receiver reports ([`Message::MediaReport`]) give the loss
///    the peer sees. When the active path is silent for [`PathConfig::dead_after`], or loss
///    stays above [`PathConfig::max_loss`] or RTT above [`PathConfig::max_rtt`] for two
///    reports, the manager switches to the next path (in the end the relay) without ending the
///    call; direct candidates are re-probed every second and win back once they answered
///    [`PathConfig::recover_after`] times in a row (after a switch for loss, not before
///    [`PathConfig::loss_hold`]; loss that follows the call to the new path is a shared
///    bottleneck's, and switches nothing for as long). The other side, which otherwise only
///    follows, falls back to the relay by itself when its path stays silent for twice
///    `dead_after` (its NAT restarted, say, and the controlling side's packets no longer reach
///    it).
/// 5. **Gathering again.** Candidates can change mid-call (a NAT that rebinds to a new port,
///    a new network): [`PathManager::update_local_candidates`] sends them again, after opening
///    probes from the new mapping; the peer opens towards the new ones, answers with its own
///    candidates, and the checks run again over the new pairs. Until that answer this side
///    sends no checks, so none reaches the peer's NAT before the peer opened towards it.
///    Packets the moved side sent before it knew (its media) may still have reached the
///    peer's NAT from the new address; on Linux the entry they left pushes the peer's mapping
///    towards that address onto another port. When the new pairs answer nothing within
///    `check_phase`, both sides send nothing directly for [`PathConfig::stale_wait`] (so the
///    stale entries expire), then open and check again. A controlled side whose direct path
///    goes silent pings the relay's super node and probes the relay after `dead_after`, so
///    that its leg of the relay follows it to a new address before it falls back.
///
/// | kind | method |
/// |---|---|
/// | input | [`PathManager::handle_message`] (candidates and reports from the peer) |
/// | input | [`PathManager::probe_answered`], [`PathManager::probe_received`], [`PathManager::heard`], [`PathManager::path_changed`] (from the endpoint) |
/// | input | [`PathManager::handle_timeout`] |
/// | command | [`PathManager::set_hold`], [`PathManager::set_relay`], [`PathManager::set_local_candidates`], [`PathManager::update_local_candidates`] |
/// | output | [`PathManager::poll_action`], [`PathManager::poll_timeout`] |
#[derive(Debug)]
pub struct PathManager {
    cfg: PathConfig,
    call: CallId,
    controlling: bool,
    relay: Path,
    active: Path,
    active_kind: PathKind,
    local: Vec<Candidate>,
    remotes: Vec<Remote>,
    opened: bool,
    peer_opened: bool,
    peer_candidates: bool,
    candidates_sent: u32,
    /// Our candidates changed mid-call and the peer has not answered them yet.
    update_pending: bool,
    /// When checks restarted after a mid-call change of either side's candidates, until a
    /// direct path answered or the checks gave up.
    changed_at: Option<Instant>,
    /// When the direct path in use died (we went to the relay): if no direct pair answers
    /// within `dead_wait`, quiet as after a failed change.
    died_at: Option<Instant>,
    /// No direct packets until then (stale NAT state left by a change must expire first; see
    /// [`PathConfig::stale_wait`]).
    quiet_until: Option<Instant>,
    /// Quiet periods in a row that did not end on a direct path.
    quiet_rounds: u32,
    /// The local socket direct paths leave from (`None`: the default one).
    via: Option<SocketAddr>,
    /// When the next [`PathAction::Rebind`] is due.
    next_rebind: Option<Instant>,
    /// A [`PathAction::Rebind`] is under way: no direct checks until it ends.
    rebinding: bool,
    /// Rebinds since a direct pair last answered.
    rebinds: u32,
    /// The rebind under way answers the peer's move to a fresh port (the controlled side).
    following: bool,
    /// The candidates of the peer's last fresh port we followed, and when.
    followed: (Vec<SocketAddr>, Option<Instant>),
    /// The peer understands fresh-port updates ([`PathManager::set_peer_fresh_ports`]).
    peer_fresh: bool,
    /// When something authenticated last arrived on the active path (not when this side
    /// merely moved to it).
    heard_at: Option<Instant>,
    /// Our pending update comes from a fresh port and asks the peer to move too.
    fresh_update: bool,
    checks_started: Option<Instant>,
    /// The fast checks were restarted since the call's first (see
    /// [`PathConfig::carried_check_interval`]).
    checks_restarted: bool,
    first_valid: Option<Instant>,
    next_candidates: Option<Instant>,
    next_check: Option<Instant>,
    next_report: Instant,
    last_heard: Instant,
    /// When the relay, in use and silent, was last reported quiet.
    relay_quiet_at: Option<Instant>,
    /// When the controlled side, its direct path silent, last probed the relay (so that the
    /// relay learns where its leg is now, should its address have changed).
    relay_poked_at: Option<Instant>,
    /// When this side last moved the session itself.
    switched_at: Option<Instant>,
    last_active_probe: Instant,
    hold: bool,
    rx: RxStats,
    epoch: Instant,
    rtt: Option<Duration>,
    loss_out: f64,
    /// The peer's last report of our media: frames lost, and its extension.
    report_out: (u16, Option<MediaReportExt>),
    peer_report_ext: bool,
    high_loss_reports: u32,
    high_rtt_reports: u32,
    /// Until when the path left for loss stays left ([`PathConfig::loss_hold`]).
    loss_hold_until: Option<Instant>,
    /// Until when reported loss switches no paths (it followed the call: a shared
    /// bottleneck).
    loss_ignored_until: Option<Instant>,
    /// Switches for loss so far (each doubles the hold), the current hold, and the direct
    /// path left for loss (its peer address).
    loss_switches: u32,
    loss_hold_len: Duration,
    loss_left: Option<SocketAddr>,
    actions: VecDeque<PathAction>,
}

impl PathManager {
    /// A manager for `call` on a session whose path is now the relay path `relay`.
    /// `controlling`: this side chooses paths (the caller). `local`: this side's candidates.
    pub fn new(
        cfg: PathConfig,
        call: CallId,
        controlling: bool,
        relay: Path,
        local: Vec<Candidate>,
        now: Instant,
    ) -> Self {
        let active_kind = PathKind::of(&relay, false);
        let mut m = Self {
            next_report: now + cfg.report_interval,
            cfg,
            call,
            controlling,
            active: relay.clone(),
            relay,
            active_kind,
            local: Vec::new(),
            remotes: Vec::new(),
            opened: false,
            peer_opened: false,
            peer_candidates: false,
            candidates_sent: 0,
            update_pending: false,
            changed_at: None,
            died_at: None,
            quiet_until: None,
            quiet_rounds: 0,
            via: None,
            next_rebind: None,
            rebinding: false,
            rebinds: 0,
            following: false,
            followed: (Vec::new(), None),
            peer_fresh: false,
            heard_at: None,
            fresh_update: false,
            checks_started: None,
            checks_restarted: false,
            first_valid: None,
            next_candidates: Some(now),
            next_check: None,
            last_heard: now,
            relay_quiet_at: None,
            relay_poked_at: None,
            switched_at: None,
            last_active_probe: now,
            hold: false,
            rx: RxStats::default(),
            epoch: now,
            rtt: None,
            loss_out: 0.0,
            report_out: (0, None),
            peer_report_ext: false,
            high_loss_reports: 0,
            high_rtt_reports: 0,
            loss_hold_until: None,
            loss_ignored_until: None,
            loss_switches: 0,
            loss_hold_len: Duration::ZERO,
            loss_left: None,
            actions: VecDeque::new(),
        };
        m.set_local_candidates(local);
        m.actions.push_back(PathAction::Event(PathEvent::Switched {
            path: m.active.clone(),
            kind: m.active_kind,
            reason: SwitchReason::Better,
        }));
        m.handle_timeout(now);
        m
    }

    /// The call.
    pub fn call(&self) -> CallId {
        self.call
    }

    /// The path in use.
    pub fn active(&self) -> (&Path, PathKind) {
        (&self.active, self.active_kind)
    }

    /// This side's candidates (at most [`MAX_CANDIDATES`]).
    pub fn set_local_candidates(&mut self, mut local: Vec<Candidate>) {
        local.sort_by_key(|c| c.kind);
        local.dedup_by_key(|c| c.addr);
        local.truncate(MAX_CANDIDATES);
        self.local = local;
    }

    /// This side's candidates changed mid-call (a reflexive address learnt late, a NAT that
    /// rebound, a new network). When they differ from the last ones and the peer's are known,
    /// opening probes go from the new mapping to every peer candidate, then the candidates go
    /// to the peer (repeated until it answers), and checks resume once it answered.
    /// These are the default socket's candidates: once the call moved to a port of its own
    /// ([`PathManager::rebound`]) they are not the call's any more and are ignored; during a
    /// rebind they are only kept.
    pub fn update_local_candidates(&mut self, now: Instant, local: Vec<Candidate>) {
        if self.via.is_some() {
            return;
        }
        if self.rebinding {
            self.set_local_candidates(local);
            return;
        }
        let old = std::mem::take(&mut self.local);
        self.set_local_candidates(local);
        if self.local == old || !self.cfg.direct {
            return;
        }
        if !self.opened {
            // Nothing said yet beyond the first candidates: the next ones carry the new set.
            self.next_candidates.get_or_insert(now);
            return;
        }
        self.forget_loss();
        self.reopen(now);
    }

    /// Open towards every peer candidate again and send ours; checks resume when the peer
    /// answered (it opened towards ours by then).
    fn reopen(&mut self, now: Instant) {
        self.quiet_until = None;
        if !self.cfg.direct {
            // Privacy: this side never tells the peer its addresses.
            return;
        }
        self.changed_at = Some(now);
        self.open_towards(self.remotes.iter().map(|r| r.addr).collect());
        self.update_pending = true;
        self.candidates_sent = 0;
        self.send_candidates(now);
    }

    /// Opening probes (low TTL) from our NAT towards `addrs`.
    fn open_towards(&mut self, addrs: Vec<SocketAddr>) {
        for addr in addrs {
            self.actions.push_back(PathAction::Probe {
                path: Path::udp_via(self.via, addr),
                ttl: Some(self.cfg.punch_ttl),
            });
        }
    }

    /// Checks (again) from now, fast for a while.
    fn restart_checks(&mut self, now: Instant) {
        self.changed_at = Some(now);
        if self.checks_started.is_some() {
            self.checks_started = Some(now);
            self.checks_restarted = true;
            self.next_check = Some(now);
        }
    }

    /// The relay path changed (this side's leg moved from TCP to UDP, say).
    pub fn set_relay(&mut self, now: Instant, relay: Path) {
        let was_active = self.active == self.relay;
        self.relay = relay.clone();
        if was_active {
            self.switch(now, relay, false, SwitchReason::Better);
        }
    }

    /// The relay itself changed: a new channel on another super node replaces one that died
    /// (`reason`: [`SwitchReason::Dead`] on the side that replaced it, [`SwitchReason::Peer`]
    /// on the side the new relay offered its channel to). The call moves there at once when it
    /// was on the relay.
    pub fn replace_relay(&mut self, now: Instant, relay: Path, reason: SwitchReason) {
        if relay == self.relay {
            return;
        }
        let was_active = self.active == self.relay;
        self.relay = relay.clone();
        self.relay_quiet_at = None;
        if was_active {
            self.switch(now, relay, false, reason);
        }
    }

    /// The relay path in use.
    pub fn relay(&self) -> &Path {
        &self.relay
    }

    /// The call went on or off hold (probes the active path 3 times a second while held).
    pub fn set_hold(&mut self, hold: bool) {
        self.hold = hold;
        // The held time is a gap on purpose, not transit jitter, nor a queue: the sender's
        // media clock stood still while ours ran.
        self.rx.last_transit = None;
        self.rx.reset_queue();
    }

    /// Candidates or a receiver report from the peer.
    pub fn handle_message(&mut self, now: Instant, msg: &Message<'_>) {
        match msg {
            Message::CallCandidates {
                call,
                opened,
                update,
                fresh,
                candidates,
            } if *call == self.call && self.cfg.direct => {
                let repeat = self.peer_candidates;
                self.peer_candidates = true;
                let mut new = Vec::new();
                for c in candidates.iter().take(MAX_CANDIDATES) {
                    if self.add_remote(c.addr, c.kind == CandidateKind::Host) {
                        new.push(c.addr);
                    }
                }

                let mut answered = false;
                if *fresh && *update && !self.controlling && self.cfg.rebind_after.is_some() {
                    // The peer moved to a fresh port and asks us to follow: our answer comes
                    // from a fresh port of ours (`rebound`), or from this one if that fails.
                    // A repeat of the request while we follow is answered by then; a repeat
                    // of one we followed, or one beyond the limits (a peer cannot make us
                    // open ports at its pace), is answered from the port we have.
                    if *opened {
                        self.peer_opened = true;
                    }
                    if self.rebinding {
                        return;
                    }
                    let mut addrs: Vec<SocketAddr> = candidates.iter().map(|c| c.addr).collect();
                    addrs.sort();
                    let again = self.followed.0 == addrs;
                    let soon = self
                        .followed
                        .1
                        .is_some_and(|t| now < t + self.cfg.rebind_after.unwrap_or_default());
                    if !again && !soon && self.rebinds < MAX_REBINDS {
                        self.followed = (addrs, Some(now));
                        self.rebinds += 1;
                        self.rebinding = true;
                        self.following = true;
                        self.update_pending = false;
                        self.quiet_until = None;
                        self.actions.push_back(PathAction::Rebind);
                        return;
                    }
                    if again && self.update_pending && self.fresh_update {
                        // The request we followed, again (it crossed our answer): a request,
                        // not the answer to ours. Answer again and keep waiting: checking
                        // now would send our probes to its new port before its own opened
                        // its NAT towards ours, and a NAT that drops them keeps an entry
                        // that pushes its mapping towards us onto another port.
                        self.send_candidates(now);
                        return;
                    }
                }
                if self.controlling
                    && self.update_pending
                    && self.fresh_update
                    && *update
                    && !*fresh
                {
                    // Not the answer to our fresh port but an update of the peer's own (its
                    // old port's address changed): it must follow us, not we it. Ask again.
                    self.send_candidates(now);
                    return;
                }
                if self.update_pending {
                    // The peer answered our new candidates: it opened towards them.
                    self.update_pending = false;
                    self.fresh_update = false;
                    self.restart_checks(now);
                } else if self.quiet_until.is_some() && (*update || !new.is_empty()) {
                    // The peer waited out the stale NAT state too and opened again: open
                    // towards it, answer, and check.
                    self.quiet_until = None;
                    self.open_towards(self.remotes.iter().map(|r| r.addr).collect());
                    self.send_candidates(now);
                    self.restart_checks(now);
                    answered = true;
                }
                if !self.opened {
                    // Open our NAT towards every candidate of the peer, then say so.
                    self.open_towards(self.remotes.iter().map(|r| r.addr).collect());
                    self.opened = true;
                    self.send_candidates(now);
                } else if repeat && !answered && (*update || !new.is_empty()) {
                    // The peer's candidates changed mid-call: open towards the new ones, say
                    // so (which answers them: the peer repeats its update until an answer
                    // comes, and its addresses may be known already from its probes), and
                    // check them.
                    self.open_towards(new);
                    self.send_candidates(now);
                    self.restart_checks(now);
                }
                if *opened {
                    self.peer_opened = true;
                }
                self.maybe_start_checks(now);
            }
            Message::MediaReport {
                call,
                expected,
                lost,
                ext,
                ..
            } if *call == self.call && *expected > 0 => {
                self.loss_out = f64::from(*lost) / f64::from(*expected);
                self.report_out = (*lost, *ext);
                let ignored = self.loss_ignored_until.is_some_and(|t| now < t);
                if self.loss_out > self.cfg.max_loss && !ignored {
                    self.high_loss_reports += 1;
                } else {
                    self.high_loss_reports = 0;
                }
                if self.high_loss_reports >= 2 {
                    self.high_loss_reports = 0;
                    self.on_high_loss(now);
                }
            }
            _ => {}
        }
    }

    /// Learns a peer address; true when it is new.
    fn add_remote(&mut self, addr: SocketAddr, lan: bool) -> bool {
        if let Some(r) = self.remotes.iter_mut().find(|r| r.addr == addr) {
            // A peer's probe can arrive before its candidates (on one LAN, its opener does):
            // the address is learnt as peer-reflexive first, then named a host candidate.
            r.lan |= lan;
            return false;
        }
        if self.remotes.len() >= 2 * MAX_CANDIDATES {
            // Make room: the oldest address that never answered (a candidate that changed).
            let Some(i) = self
                .remotes
                .iter()
                .position(|r| r.last_answer.is_none() || r.failed)
            else {
                return false;
            };
            self.remotes.remove(i);
        }
        self.remotes.push(Remote {
            addr,
            lan,
            streak: 0,
            unanswered: 0,
            rtt: None,
            last_answer: None,
            failed: false,
        });
        true
    }

    fn maybe_start_checks(&mut self, now: Instant) {
        if self.checks_started.is_none() && self.opened && self.peer_opened {
            self.checks_started = Some(now);
            self.next_check = Some(now);
        }
    }

    fn send_candidates(&mut self, now: Instant) {
        self.candidates_sent += 1;
        self.actions
            .push_back(PathAction::Send(Message::CallCandidates {
                call: self.call,
                opened: self.opened,
                update: self.update_pending,
                fresh: self.update_pending && self.fresh_update,
                candidates: self.local.clone(),
            }));
        self.next_candidates = Some(now + self.cfg.candidates_retransmit);
    }

    /// A probe of ours on `path` was answered after `rtt`.
    pub fn probe_answered(&mut self, now: Instant, path: &Path, rtt: Duration) {
        if *path == self.active {
            self.heard(now);
            self.rtt = Some(self.rtt.map_or(rtt, |old| (old * 7 + rtt) / 8));
            if rtt > self.cfg.max_rtt {
                self.high_rtt_reports += 1;
                if self.high_rtt_reports >= 2 {
                    self.high_rtt_reports = 0;
                    self.fail_active(now, SwitchReason::Rtt);
                }
            } else {
                self.high_rtt_reports = 0;
            }
        }
        let Some(addr) = path.peer_udp() else {
            return;
        };
        if path.via() != self.via {
            // An answer on a port this side has left: its pairs are the new port's now.
            return;
        }
        if let Some(r) = self.remotes.iter_mut().find(|r| r.addr == addr) {
            r.streak += 1;
            r.unanswered = 0;
            r.rtt = Some(rtt);
            r.last_answer = Some(now);
            if r.failed && r.streak >= self.cfg.recover_after {
                r.failed = false;
            }
            self.first_valid.get_or_insert(now);
        }
        self.choose(now);
    }

    /// The peer probed us on `path`: a peer-reflexive candidate when its address is new.
    pub fn probe_received(&mut self, now: Instant, path: &Path) {
        if let Some(addr) = path.peer_udp() {
            let known = self.remotes.iter().any(|r| r.addr == addr);
            self.add_remote(addr, false);
            if !known && self.checks_started.is_some() {
                self.actions.push_back(PathAction::Probe {
                    path: path.clone(),
                    ttl: None,
                });
            }
        }
        if *path == self.active {
            self.heard(now);
        }
    }

    /// Whether `path` is the active one: the same path, or the relay's channel reached by
    /// another leg of ours while the relay is active.
    fn is_active(&self, path: &Path) -> bool {
        *path == self.active
            || matches!(
                (path, &self.active),
                (Path::Relayed { channel: a, .. }, Path::Relayed { channel: b, .. }) if a == b
            )
    }

    /// Something authenticated arrived on the session's current path (media, keep-alives).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.heard_at = Some(now);
        self.relay_quiet_at = None;
    }

    /// A media frame arrived on `path`: `frame` starts with the media header (flags, sequence
    /// u16, timestamp u16 in 2.5 ms ticks), see `natter_media::frame`. It counts in the
    /// receiver statistics whatever path it came by, but keeps only the active path alive (a
    /// frame still arriving through the relay says nothing about a direct path).
    pub fn media_received(&mut self, now: Instant, path: &Path, frame: &[u8]) {
        if self.is_active(path) {
            self.heard(now);
        }
        if frame.len() >= 5 {
            let seq = u16::from_be_bytes([frame[1], frame[2]]);
            let ts = u16::from_be_bytes([frame[3], frame[4]]);
            let ms = now.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0;
            self.rx.on_frame(seq, ts, ms, frame.len());
        }
    }

    /// The endpoint moved the session to `path` because the peer's packets arrive there now
    /// (on the controlled side, this is how it follows the controlling side). The controlling
    /// side on a direct path does not follow the peer back onto the relay: the peer only uses
    /// the relay until the first packet on the chosen path reaches it, and one it sent just
    /// before (the newest when it arrives, the relay being slower) would otherwise move this
    /// side back, and the peer after it.
    pub fn path_changed(&mut self, now: Instant, path: &Path) {
        if *path == self.active {
            return;
        }
        // The relay channel, reached by another leg of ours than the one chosen with
        // `set_relay` (frames forwarded on the old leg before the relay learnt the new one): it
        // is the relay, and this side stays on its own leg.
        let other_leg = *path != self.relay
            && matches!(
                (path, &self.relay),
                (Path::Relayed { channel: a, .. }, Path::Relayed { channel: b, .. }) if a == b
            );
        if other_leg && self.active == self.relay {
            self.actions
                .push_back(PathAction::UsePath(self.relay.clone()));
            return;
        }
        let path = if other_leg {
            self.relay.clone()
        } else {
            path.clone()
        };
        // The controlling side just chose a direct path: frames the peer still sends through
        // the relay until it follows do not move this side back (later ones do: the peer
        // cannot follow, the new path works one way only).
        let just_chose = self
            .switched_at
            .is_some_and(|t| now < t + self.cfg.dead_after);
        if self.controlling && just_chose && path == self.relay && self.active != self.relay {
            self.actions
                .push_back(PathAction::UsePath(self.active.clone()));
            return;
        }
        // Nor do frames the peer still sends on the path left for loss, until it follows.
        if self.controlling
            && self.loss_left.is_some()
            && path.peer_udp() == self.loss_left
            && self.loss_held(now)
        {
            self.actions
                .push_back(PathAction::UsePath(self.active.clone()));
            return;
        }
        if other_leg {
            // Following the peer to the relay, on our own leg.
            self.actions
                .push_back(PathAction::UsePath(self.relay.clone()));
        }
        let path = &path;
        let lan = path
            .peer_udp()
            .is_some_and(|a| self.remotes.iter().any(|r| r.addr == a && r.lan));
        self.active = path.clone();
        // Another path has another transit: a longer one is not a queue.
        self.rx.reset_queue();
        self.active_kind = PathKind::of(path, lan);
        self.last_heard = now;
        self.actions
            .push_back(PathAction::Event(PathEvent::Switched {
                path: path.clone(),
                kind: self.active_kind,
                reason: SwitchReason::Peer,
            }));
    }

    fn remote_rank(r: &Remote) -> (u8, Duration) {
        (u8::from(!r.lan), r.rtt.unwrap_or(Duration::MAX))
    }

    /// The controlling side picks the best working direct path, if any beats the active one.
    fn choose(&mut self, now: Instant) {
        if !self.controlling {
            return;
        }
        let Some(first) = self.first_valid else {
            return;
        };
        if now < first + self.cfg.settle && self.active == self.relay {
            // Give a better candidate (same LAN) a moment to answer too.
            self.next_check = Some(
                self.next_check
                    .map_or(first + self.cfg.settle, |t| t.min(first + self.cfg.settle)),
            );
            return;
        }
        // Left for loss a moment ago: it answers probes, but media lost too much on it.
        let left = self.loss_left.filter(|_| self.loss_held(now));
        let best = self
            .remotes
            .iter()
            .filter(|r| !r.failed && r.streak > 0 && r.unanswered < 3)
            .filter(|r| Some(r.addr) != left)
            .min_by_key(|r| Self::remote_rank(r))
            .cloned();
        let Some(best) = best else {
            return;
        };
        let path = Path::udp_via(self.via, best.addr);
        if path == self.active {
            return;
        }
        let better = match self.active.peer_udp() {
            None => true,
            // A direct path from a port this side has left (it came back during a rebind).
            Some(_) if self.active.via() != self.via => true,
            Some(a) => match self.remotes.iter().find(|r| r.addr == a) {
                Some(cur) => cur.failed || (best.lan && !cur.lan),
                None => true,
            },
        };
        if better {
            self.switch(now, path, best.lan, SwitchReason::Better);
        }
    }

    fn switch(&mut self, now: Instant, path: Path, lan: bool, reason: SwitchReason) {
        // (Not `active != relay`: a replaced relay is a relay too, and no direct path died.)
        if self.cfg.direct
            && !self.active.is_relayed()
            && path.is_relayed()
            && matches!(reason, SwitchReason::Dead | SwitchReason::Peer)
        {
            self.died_at = Some(now);
            if let Some(after) = self.cfg.rebind_after.filter(|_| self.may_rebind()) {
                self.next_rebind.get_or_insert(now + after);
            }
        }
        self.switched_at = Some(now);
        self.active = path.clone();
        // Another path has another transit: a longer one is not a queue.
        self.rx.reset_queue();
        self.active_kind = PathKind::of(&path, lan);
        self.last_heard = now;
        self.relay_quiet_at = None;
        self.high_loss_reports = 0;
        self.high_rtt_reports = 0;
        self.actions.push_back(PathAction::UsePath(path.clone()));
        // Something on the new path at once, so the peer follows without waiting for media.
        self.actions.push_back(PathAction::Send(Message::KeepAlive));
        self.actions
            .push_back(PathAction::Event(PathEvent::Switched {
                path,
                kind: self.active_kind,
                reason,
            }));
    }

    /// Whether this side may move its direct paths to a fresh port now.
    fn may_rebind(&self) -> bool {
        self.controlling
            && self.cfg.direct
            && self.cfg.rebind_after.is_some()
            && !self.rebinding
            && self.rebinds < MAX_REBINDS
    }

    /// The fresh port asked for with [`PathAction::Rebind`] is open at `via`, and `local` are
    /// its candidates (its reflexive address, host addresses with its port). Direct paths
    /// leave from it from now on: opening probes go from it to every peer candidate, the
    /// candidates go to the peer as an update, and checks resume once it answered (it opened
    /// towards the new mapping by then). The owner may close the port used before.
    pub fn rebound(&mut self, now: Instant, via: SocketAddr, local: Vec<Candidate>) {
        self.rebinding = false;
        self.forget_loss();
        // The update says it comes from a fresh port: from the controlling side, a request
        // that the peer follows; from the controlled side, the answer to one.
        self.fresh_update = self.peer_fresh;
        self.following = false;
        // The new pairs get the settle time of first checks.
        self.first_valid = None;
        self.via = Some(via);
        // The pairs start afresh on the new port.
        for r in &mut self.remotes {
            r.streak = 0;
            r.unanswered = 0;
            r.rtt = None;
            r.last_answer = None;
            r.failed = false;
        }
        self.set_local_candidates(local);
        if self.active != self.relay {
            // A direct path from the old port came back meanwhile: keep using it until the
            // new port's pairs are chosen.
            self.died_at = None;
        }
        self.reopen(now);
    }

    /// The fresh port asked for with [`PathAction::Rebind`] could not be opened, or its
    /// reflexive address not learnt (the NAT or the super node still down): try again a
    /// second later, at most [`MAX_REBINDS`] times in a row, then wait the stale state out.
    pub fn rebind_failed(&mut self, now: Instant) {
        if !self.rebinding {
            return;
        }
        self.rebinding = false;
        if std::mem::take(&mut self.following) {
            // Answer the peer's fresh port from the port we have.
            self.open_towards(self.remotes.iter().map(|r| r.addr).collect());
            self.send_candidates(now);
            self.restart_checks(now);
            return;
        }
        if self.active != self.relay {
            return;
        }
        if self.may_rebind() {
            self.next_rebind = Some(now + self.cfg.recheck_interval);
        } else if self.died_at.is_none() {
            self.go_quiet(now);
        }
    }

    /// Whether the peer understands fresh-port updates (it announced
    /// [`crate::crypto::Capabilities::FRESH_PORTS`] in its handshake): only then does this
    /// side's update from a fresh port ask it to follow (an older peer would drop the whole
    /// message as malformed). Off by default.
    pub fn set_peer_fresh_ports(&mut self, yes: bool) {
        self.peer_fresh = yes;
    }

    /// Whether the peer reads the loss-run count of media reports (it announced
    /// [`crate::crypto::Capabilities::REPORT_EXT`] in its handshake): only then do this side's
    /// reports carry it (an older peer would drop them as malformed). Off by default.
    pub fn set_peer_report_ext(&mut self, yes: bool) {
        self.peer_report_ext = yes;
    }

    /// The local socket direct paths leave from (`None`: the default one).
    pub fn via(&self) -> Option<SocketAddr> {
        self.via
    }

    /// Send nothing directly to the peer until a NAT's stale state expired and was reaped,
    /// then open again; longer each time (a failed round left state of its own).
    fn go_quiet(&mut self, now: Instant) {
        if !self.cfg.direct {
            return;
        }
        let wait = self.cfg.stale_wait * [1, 3, 6][self.quiet_rounds.min(2) as usize];
        self.quiet_rounds += 1;
        self.quiet_until = Some(now + wait);
    }

    /// The peer reported loss above [`PathConfig::max_loss`] twice in a row.
    fn on_high_loss(&mut self, now: Instant) {
        if !self.controlling {
            return;
        }
        if self.loss_held(now) && self.active.peer_udp() != self.loss_left {
            // On the path moved to for loss, and it loses as much: the loss is not the
            // path's but a bottleneck both share. Back to the path left once it answers, and
            // let the congestion control deal with the loss: switching paths would only
            // reset what it measured.
            self.loss_hold_until = None;
            self.loss_ignored_until = now.checked_add(self.loss_hold_len);
            if let Some(left) = self.loss_left.take() {
                if let Some(r) = self.remotes.iter_mut().find(|r| r.addr == left) {
                    r.failed = false;
                }
            }
            self.choose(now);
            return;
        }
        if self.active.is_relayed() {
            return;
        }
        self.loss_hold_len = self.cfg.loss_hold * (1u32 << self.loss_switches.min(3));
        self.loss_switches += 1;
        self.loss_hold_until = now.checked_add(self.loss_hold_len);
        self.loss_left = self.active.peer_udp();
        self.fail_active(now, SwitchReason::Loss);
    }

    /// Within the hold after a switch for loss, with the path in use alive (a path silent for
    /// five times `dead_after`, a relay whose super node died, ends the hold's effect; a
    /// congested one's silences are shorter).
    fn loss_held(&self, now: Instant) -> bool {
        self.loss_hold_until.is_some_and(|t| now < t)
            && now.saturating_duration_since(self.last_heard) < self.cfg.dead_after * 5
    }

    /// A new network or port: what was learnt of loss on the old paths no longer holds.
    fn forget_loss(&mut self) {
        self.loss_hold_until = None;
        self.loss_ignored_until = None;
        self.loss_left = None;
    }

    /// The active path does not do: mark it failed and move to the next best (the relay
    /// last).
    fn fail_active(&mut self, now: Instant, reason: SwitchReason) {
        if !self.controlling {
            return;
        }
        if let Some(a) = self.active.peer_udp() {
            if let Some(r) = self.remotes.iter_mut().find(|r| r.addr == a) {
                r.failed = true;
                r.streak = 0;
            }
        } else {
            // Already on the relay: nothing better to go to.
            return;
        }
        let next = self
            .remotes
            .iter()
            .filter(|r| !r.failed && r.streak > 0 && r.unanswered == 0)
            .min_by_key(|r| Self::remote_rank(r))
            .map(|r| (r.addr, r.lan));
        match next {
            Some((addr, lan)) => self.switch(now, Path::udp_via(self.via, addr), lan, reason),
            None => {
                let relay = self.relay.clone();
                self.switch(now, relay, false, reason)
            }
        }
    }

    /// The deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_candidates.is_some_and(|t| now >= t) {
            // Until the peer's arrived, at most 10 times (a relay-only peer never answers).
            if !self.cfg.direct
                || (self.peer_candidates && self.peer_opened && !self.update_pending)
                || self.candidates_sent >= 10
            {
                self.next_candidates = None;
                if self.update_pending {
                    // Ten unanswered updates: check anyway rather than wait for good.
                    self.update_pending = false;
                    self.fresh_update = false;
                    self.restart_checks(now);
                }
            } else {
                self.send_candidates(now);
            }
        }
        if let Some(changed) = self.changed_at {
            let answered = self
                .remotes
                .iter()
                .any(|r| r.last_answer.is_some_and(|t| t >= changed));
            if answered || self.active != self.relay {
                self.changed_at = None;
                self.quiet_rounds = 0;
                self.rebinds = 0;
                self.next_rebind = None;
            } else if now >= changed + self.cfg.check_phase && !self.update_pending {
                // The new pairs never answered: most likely a NAT's stale state from the
                // change. A fresh port avoids it; failing that, wait it out.
                self.changed_at = None;
                if self.may_rebind() {
                    self.next_rebind = Some(now);
                } else {
                    self.go_quiet(now);
                }
            }
        }
        if let Some(died) = self.died_at {
            let answered = self
                .remotes
                .iter()
                .any(|r| r.last_answer.is_some_and(|t| t >= died));
            if answered || self.active != self.relay || self.quiet_until.is_some() {
                self.died_at = None;
            } else if now >= died + self.cfg.dead_wait
                && !self.update_pending
                && self.changed_at.is_none()
                && !self.rebinding
                && self.next_rebind.is_none()
            {
                // The direct path died and stayed dead while the relay works: a NAT that
                // restarted may hold a stale entry our peer's re-checks keep alive.
                self.died_at = None;
                self.go_quiet(now);
            }
        }
        if self.next_rebind.is_some_and(|t| now >= t) {
            self.next_rebind = None;
            let relay_alive = self
                .heard_at
                .is_some_and(|h| now.saturating_duration_since(h) < self.cfg.dead_after);
            if self.active == self.relay && self.may_rebind() {
                if relay_alive {
                    self.rebinds += 1;
                    self.rebinding = true;
                    self.actions.push_back(PathAction::Rebind);
                } else {
                    // Nothing gets through right now (our NAT is still down, say): a super
                    // node could not tell the new port's address either. Rebind as soon as
                    // the relay is heard again, without spending a try.
                    self.next_rebind = Some(now + self.cfg.check_interval);
                }
            }
        }
        if self.quiet_until.is_some_and(|t| now >= t) {
            self.reopen(now);
        }
        if self.next_check.is_some_and(|t| now >= t) {
            let fast = self
                .checks_started
                .is_some_and(|s| now < s + self.cfg.check_phase);
            let via = self.via;
            for r in &mut self.remotes {
                let path = Path::udp_via(via, r.addr);
                // While the peer has not answered our new candidates it may not have opened
                // towards our new mapping: a check now could reach its NAT first. While a
                // rebind is under way the old port is being left.
                if path == self.active
                    || self.update_pending
                    || self.quiet_until.is_some()
                    || self.rebinding
                {
                    continue;
                }
                if r.unanswered >= 2 {
                    r.streak = 0;
                }
                r.unanswered = r.unanswered.saturating_add(1);
                self.actions
                    .push_back(PathAction::Probe { path, ttl: None });
            }
            // The relay stays checked (and its channel alive) while a direct path is in use.
            if self.active != self.relay && !fast {
                self.actions.push_back(PathAction::Probe {
                    path: self.relay.clone(),
                    ttl: None,
                });
            }
            // Later fast phases check gently while something carries the call: their probes
            // share the link with its media.
            let carried = self
                .heard_at
                .is_some_and(|h| now.saturating_duration_since(h) < self.cfg.dead_after);
            self.next_check = Some(
                now + if !fast {
                    self.cfg.recheck_interval
                } else if self.checks_restarted && carried {
                    self.cfg.carried_check_interval
                } else {
                    self.cfg.check_interval
                },
            );
            self.choose(now);
        }
        // Watch the active path.
        let quiet = now.saturating_duration_since(self.last_heard);
        if quiet >= self.cfg.dead_after && self.active != self.relay {
            if self.controlling {
                self.fail_active(now, SwitchReason::Dead);
            } else if quiet >= self.cfg.dead_after * 2 {
                // The controlling side's packets no longer reach us on this path (and it may
                // not know): back to the relay, which always works; it chooses again there.
                let relay = self.relay.clone();
                self.switch(now, relay, false, SwitchReason::Dead);
            } else if !self.poked_since_heard() {
                // The controlling side has moved to the relay by now; if our address changed
                // the relay still sends our leg to the old one until we send on it.
                // The ping of the relay's super node (RelayQuiet) moves our session with it
                // to where we are now, and with it our leg of the relay.
                self.relay_poked_at = Some(now);
                self.actions.push_back(PathAction::RelayQuiet);
                self.actions.push_back(PathAction::Probe {
                    path: self.relay.clone(),
                    ttl: None,
                });
            }
        }
        if let Some(at) = self.relay_quiet_due() {
            if now >= at {
                self.relay_quiet_at = Some(now);
                self.actions.push_back(PathAction::RelayQuiet);
            }
        }
        let probe_every = if self.hold {
            self.cfg.hold_probe
        } else {
            self.cfg.active_probe
        };
        let since_probe = now.saturating_duration_since(self.last_active_probe);
        // When media flows the path is alive, but its RTT is still measured once a report
        // interval.
        if ((self.hold || quiet >= self.cfg.active_probe) && since_probe >= probe_every)
            || since_probe >= self.cfg.report_interval
        {
            self.last_active_probe = now;
            self.actions.push_back(PathAction::Probe {
                path: self.active.clone(),
                ttl: None,
            });
        }
        if now >= self.next_report {
            self.next_report = now + self.cfg.report_interval;
            let (expected, lost, runs) = self.rx.interval();
            let now_ms = now.saturating_duration_since(self.epoch).as_secs_f64() * 1000.0;
            let (queue_ms, recv_bps) = self.rx.queue_interval(now_ms);
            let loss_in = if expected > 0 {
                lost as f64 / expected as f64
            } else {
                0.0
            };
            let rtt_ms = self
                .rtt
                .map_or(0, |r| r.as_millis().min(u128::from(u16::MAX)) as u16);
            self.actions
                .push_back(PathAction::Send(Message::MediaReport {
                    call: self.call,
                    expected: expected.min(u64::from(u16::MAX)) as u16,
                    lost: lost.min(u64::from(u16::MAX)) as u16,
                    jitter_ms: self.rx.jitter.min(f64::from(u16::MAX)) as u16,
                    rtt_ms,
                    ext: self.peer_report_ext.then(|| MediaReportExt {
                        runs: runs.min(u64::from(u16::MAX)) as u16,
                        queue_ms: queue_ms.clamp(0.0, f64::from(u16::MAX)) as u16,
                        recv_rate: (recv_bps / 100.0).clamp(0.0, f64::from(u16::MAX)) as u16,
                    }),
                }));
            self.actions
                .push_back(PathAction::Event(PathEvent::Stats(CallQuality {
                    rtt: self.rtt,
                    loss_in,
                    loss_out: self.loss_out,
                    loss_run_out: match self.report_out {
                        (lost, Some(e)) if e.runs > 0 && lost > 0 => {
                            Some(f64::from(lost) / f64::from(e.runs.min(lost)))
                        }
                        _ => None,
                    },
                    queue_ms_out: self.report_out.1.map(|e| f64::from(e.queue_ms)),
                    recv_bps_out: self.report_out.1.map(|e| f64::from(e.recv_rate) * 100.0),
                    jitter_ms: self.rx.jitter,
                    frames_in: self.rx.received,
                    kind: Some(self.active_kind),
                })));
        }
    }

    /// Whether the controlled side probed the relay since it last heard the peer.
    fn poked_since_heard(&self) -> bool {
        self.relay_poked_at.is_some_and(|t| t >= self.last_heard)
    }

    /// When the relay, if in use, is next reported quiet: half of `dead_after` after the last
    /// thing heard (the relay is the last resort: a dead one is worth checking early), then
    /// every `dead_after` while nothing is.
    fn relay_quiet_due(&self) -> Option<Instant> {
        (self.active == self.relay).then(|| match self.relay_quiet_at {
            Some(at) if at >= self.last_heard => at + self.cfg.dead_after,
            _ => self.last_heard + self.cfg.dead_after / 2,
        })
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<PathAction> {
        self.actions.pop_front()
    }

    /// When [`PathManager::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Exactly when `handle_timeout` would act, never earlier: a deadline that stays in the
        // past while nothing is due (media keeps the active path heard; the controlled side
        // never fails a path itself) would make the owner spin.
        let probe = if self.hold {
            self.last_active_probe + self.cfg.hold_probe
        } else {
            (self.last_active_probe + self.cfg.active_probe)
                .max(self.last_heard + self.cfg.active_probe)
        };
        let dead = (self.active != self.relay).then(|| {
            self.last_heard
                + if self.controlling || !self.poked_since_heard() {
                    self.cfg.dead_after
                } else {
                    self.cfg.dead_after * 2
                }
        });
        [
            self.relay_quiet_due(),
            self.quiet_until,
            // A round waiting for the peer's answer to our new candidates is judged only after
            // it came (`handle_timeout` skips it until then).
            self.changed_at
                .filter(|_| !self.update_pending)
                .map(|c| c + self.cfg.check_phase),
            self.died_at
                .filter(|_| {
                    !self.update_pending
                        && self.changed_at.is_none()
                        && !self.rebinding
                        && self.next_rebind.is_none()
                })
                .map(|d| d + self.cfg.dead_wait),
            self.next_rebind,
            self.next_candidates,
            self.next_check,
            Some(self.next_report),
            Some(probe),
            // The active path's RTT is measured once a report interval even while media flows.
            Some(self.last_active_probe + self.cfg.report_interval),
            dead,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay() -> Path {
        Path::Relayed {
            relay: Destination::Udp("198.18.0.10:4000".parse().unwrap()),
            channel: 7,
        }
    }

    fn manager(controlling: bool, now: Instant) -> PathManager {
        manager_with(PathConfig::default(), controlling, now)
    }

    fn manager_with(cfg: PathConfig, controlling: bool, now: Instant) -> PathManager {
        PathManager::new(cfg, CallId([1; 16]), controlling, relay(), Vec::new(), now)
    }

    /// Drives `m` from `start` for `secs` seconds in 10 ms steps, calling `each` at every
    /// step; the deadline it reports after each timeout must be in the future (an owner
    /// would spin on a deadline that stays in the past).
    fn drive(
        m: &mut PathManager,
        start: Instant,
        secs: u64,
        mut each: impl FnMut(&mut PathManager, Instant),
    ) {
        let mut t = start;
        while t < start + Duration::from_secs(secs) {
            each(m, t);
            if m.poll_timeout().is_some_and(|d| d <= t) {
                m.handle_timeout(t);
                while m.poll_action().is_some() {}
                let next = m.poll_timeout().expect("a report is always due");
                assert!(next > t, "deadline {next:?} not after {t:?}");
            }
            t += Duration::from_millis(10);
        }
    }

    #[test]
    fn media_on_the_active_path_does_not_leave_the_deadline_in_the_past() {
        let start = Instant::now();
        let mut m = manager(true, start);
        let mut seq = 0u16;
        drive(&mut m, start, 3, |m, t| {
            m.media_received(t, &relay(), &[0, (seq >> 8) as u8, seq as u8, 0, 0]);
            seq = seq.wrapping_add(1);
        });
    }

    #[test]
    fn a_replaced_relay_is_no_dead_direct_path_and_privacy_never_sends_candidates() {
        for direct in [true, false] {
            let start = Instant::now();
            let cfg = PathConfig {
                direct,
                ..PathConfig::default()
            };
            let mut m = PathManager::new(cfg, CallId([1; 16]), true, relay(), Vec::new(), start);
            while m.poll_action().is_some() {}
            // The relaying super node crashed: the call moves to another relay.
            let other = Path::Relayed {
                relay: Destination::Udp("198.18.0.11:4000".parse().unwrap()),
                channel: 8,
            };
            m.replace_relay(start, other, SwitchReason::Dead);
            let mut candidates = 0;
            drive(&mut m, start, 60, |m, t| {
                m.heard(t);
                while let Some(a) = m.poll_action() {
                    if matches!(a, PathAction::Send(Message::CallCandidates { .. })) {
                        candidates += 1;
                    }
                }
            });
            // No quiet period and no reopening: nothing direct ever died.
            assert_eq!(candidates, 0, "direct: {direct}");
            assert!(m.quiet_until.is_none(), "direct: {direct}");
        }
    }

    #[test]
    fn the_controlled_side_on_a_silent_direct_path_falls_back_to_the_relay_without_spinning() {
        let start = Instant::now();
        let mut m = manager(false, start);
        let direct = Path::udp("198.18.50.1:5000".parse().unwrap());
        m.path_changed(start, &direct);
        assert_eq!(m.active().1, PathKind::Direct);
        // Heard until 1 s, then nothing: the relay twice `dead_after` later (not before).
        let mut fell_back = None;
        drive(&mut m, start, 3, |m, t| {
            if t < start + Duration::from_secs(1) {
                m.heard(t);
            } else if fell_back.is_none() && m.active().1 == PathKind::RelayUdp {
                fell_back = Some(t);
            }
        });
        let after = fell_back.expect("fell back") - (start + Duration::from_secs(1));
        let dead = PathConfig::default().dead_after;
        assert!(after >= dead * 2 && after <= dead * 2 + Duration::from_millis(20));
        assert_eq!(m.active(), (&relay(), PathKind::RelayUdp));
    }

    fn actions(m: &mut PathManager) -> Vec<PathAction> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn candidates(opened: bool, addrs: &[&str]) -> Message<'static> {
        Message::CallCandidates {
            call: CallId([1; 16]),
            opened,
            update: false,
            fresh: false,
            candidates: addrs
                .iter()
                .map(|a| Candidate {
                    kind: CandidateKind::Reflexive,
                    addr: a.parse().unwrap(),
                })
                .collect(),
        }
    }

    fn reflexive(a: &str) -> Vec<Candidate> {
        vec![Candidate {
            kind: CandidateKind::Reflexive,
            addr: a.parse().unwrap(),
        }]
    }

    /// (opening probes with their targets, checks with theirs, candidate messages sent).
    fn sorted(acts: &[PathAction]) -> (Vec<SocketAddr>, Vec<SocketAddr>, usize) {
        let mut open = Vec::new();
        let mut check = Vec::new();
        let mut sent = 0;
        for a in acts {
            match a {
                PathAction::Probe {
                    path:
                        Path::Direct {
                            to: Destination::Udp(to),
                            ..
                        },
                    ttl,
                } => {
                    if ttl.is_some() {
                        open.push(*to);
                    } else {
                        check.push(*to);
                    }
                }
                PathAction::Send(Message::CallCandidates { .. }) => sent += 1,
                _ => {}
            }
        }
        (open, check, sent)
    }

    #[test]
    fn media_through_the_relay_does_not_keep_a_silent_direct_path_alive() {
        let start = Instant::now();
        let (mut m, t) = chose_direct(start);
        // The peer's frames still come through the relay (it never followed): the direct
        // path is silent, and the controlling side leaves it after `dead_after`.
        let mut seq = 0u16;
        let mut left = None;
        drive(&mut m, t, 2, |m, now| {
            m.media_received(now, &relay(), &[0, (seq >> 8) as u8, seq as u8, 0, 0]);
            seq = seq.wrapping_add(1);
            if left.is_none() && m.active().1 == PathKind::RelayUdp {
                left = Some(now - t);
            }
        });
        let left = left.expect("left the direct path");
        assert!(left <= PathConfig::default().dead_after + Duration::from_millis(20));
    }

    #[test]
    fn new_local_candidates_mid_call_open_first_and_check_only_after_the_peer_answered() {
        let start = Instant::now();
        let mut m = manager(true, start);
        connected(&mut m, start);
        // Checks run; then our NAT rebinds us.
        let t = start + Duration::from_secs(5);
        m.handle_timeout(t);
        assert!(!sorted(&actions(&mut m)).1.is_empty(), "checks run");
        let t = t + Duration::from_millis(10);
        m.update_local_candidates(t, reflexive("198.18.50.2:6001"));
        let (open, check, sent) = sorted(&actions(&mut m));
        assert_eq!(open, vec!["198.18.50.1:5000".parse().unwrap()]);
        assert!(check.is_empty());
        assert_eq!(sent, 1, "the new candidates go out");
        // The same candidates again: nothing to say.
        m.update_local_candidates(t, reflexive("198.18.50.2:6001"));
        assert!(actions(&mut m).is_empty());
        // No checks until the peer answers, and the candidates are repeated meanwhile.
        let t = t + Duration::from_secs(2);
        m.handle_timeout(t);
        let (_, check, sent) = sorted(&actions(&mut m));
        assert!(
            check.is_empty(),
            "no check before the peer opened: {check:?}"
        );
        assert_eq!(sent, 1, "repeated");
        // The peer answers (same candidates as before): checks at once.
        m.handle_message(t, &candidates(true, &["198.18.50.1:5000"]));
        m.handle_timeout(t);
        let (open, check, sent) = sorted(&actions(&mut m));
        assert!(open.is_empty() && sent == 0);
        assert_eq!(check, vec!["198.18.50.1:5000".parse().unwrap()]);
        // And no more repeats.
        m.handle_timeout(t + Duration::from_secs(2));
        assert_eq!(sorted(&actions(&mut m)).2, 0);
    }

    #[test]
    fn new_pairs_that_never_answer_go_quiet_then_reopen_waiting_longer_each_time() {
        let start = Instant::now();
        // A side that cannot move to a fresh port (the controlled one, or rebinds off).
        let cfg = PathConfig {
            rebind_after: None,
            ..PathConfig::default()
        };
        let mut m = manager_with(cfg, true, start);
        let mut t = moved_mid_call(&mut m, start);
        let check_phase = PathConfig::default().check_phase;
        let stale = PathConfig::default().stale_wait;
        for round in 0..3u32 {
            let quiet_from = t + check_phase;
            // Checks for the check phase, then nothing direct for the quiet period.
            let mut direct_during_quiet = 0;
            while t < quiet_from + stale * [1, 3, 6][round as usize] - Duration::from_millis(50) {
                t += Duration::from_millis(50);
                m.handle_timeout(t);
                let (open, check, _) = sorted(&actions(&mut m));
                if t > quiet_from + Duration::from_millis(60) {
                    direct_during_quiet += open.len() + check.len();
                }
            }
            assert_eq!(direct_during_quiet, 0, "round {round}: quiet");
            // Then it opens again and sends its candidates.
            t += Duration::from_millis(100);
            m.handle_timeout(t);
            let (open, check, sent) = sorted(&actions(&mut m));
            assert_eq!(
                open,
                vec!["198.18.50.1:5000".parse().unwrap()],
                "round {round}"
            );
            assert!(check.is_empty() && sent == 1, "round {round}");
            // The peer answers; checks run again and fail again.
            m.handle_message(t, &candidates(true, &["198.18.50.1:5000"]));
        }
    }

    /// Candidates exchanged at `start`; 5 s later our NAT moves, the peer answers our new
    /// candidates, and nothing answers the checks. Returns that instant.
    fn moved_mid_call(m: &mut PathManager, start: Instant) -> Instant {
        connected(m, start);
        let t = start + Duration::from_secs(5);
        m.update_local_candidates(t, reflexive("198.18.51.2:6000"));
        m.handle_message(t, &candidates(true, &["198.18.50.1:5000"]));
        actions(m);
        t
    }

    /// Candidates exchanged at `start` with a peer at 198.18.50.1:5000.
    fn connected(m: &mut PathManager, start: Instant) {
        m.update_local_candidates(start, reflexive("198.18.50.2:6000"));
        m.handle_message(start, &candidates(true, &["198.18.50.1:5000"]));
        actions(m);
    }

    /// The probes among `acts`: (opening probes, checks), each with the port it leaves from.
    fn probes_via(acts: &[PathAction]) -> (Vec<Option<SocketAddr>>, Vec<Option<SocketAddr>>) {
        let (mut open, mut check) = (Vec::new(), Vec::new());
        for a in acts {
            if let PathAction::Probe { path, ttl } = a {
                if path.peer_udp().is_some() {
                    if ttl.is_some() { &mut open } else { &mut check }.push(path.via());
                }
            }
        }
        (open, check)
    }

    #[test]
    fn new_pairs_that_never_answer_move_to_a_fresh_port_before_going_quiet() {
        let start = Instant::now();
        let mut m = manager(true, start);
        let mut t = moved_mid_call(&mut m, start);
        let check_phase = PathConfig::default().check_phase;
        let fresh: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        for round in 0..MAX_REBINDS {
            // The checks fail for the check phase: the manager asks for a fresh port.
            let end = t + check_phase + Duration::from_millis(100);
            let mut rebinds = 0;
            while t < end {
                t += Duration::from_millis(50);
                // Media keeps arriving through the relay.
                m.heard(t);
                m.handle_timeout(t);
                rebinds += actions(&mut m)
                    .iter()
                    .filter(|a| matches!(a, PathAction::Rebind))
                    .count();
            }
            assert_eq!(rebinds, 1, "round {round}");
            // No checks at all while the port is being opened.
            t += Duration::from_secs(1);
            m.handle_timeout(t);
            assert_eq!(probes_via(&actions(&mut m)).1.len(), 0, "round {round}");
            // The port is open: openers go from it, then the update; no checks yet.
            let port = SocketAddr::new(fresh.ip(), fresh.port() + round as u16);
            m.rebound(t, port, reflexive("198.18.51.2:7000"));
            let acts = actions(&mut m);
            let (open, check) = probes_via(&acts);
            assert_eq!((open, check.len()), (vec![Some(port)], 0), "round {round}");
            let update = acts.iter().any(|a| {
                matches!(a, PathAction::Send(Message::CallCandidates { update: true, candidates, .. })
                    if candidates[0].addr == "198.18.51.2:7000".parse().unwrap())
            });
            assert!(update, "round {round}: the new candidates go to the peer");
            // The default socket's candidates no longer concern the call.
            m.update_local_candidates(t, reflexive("198.18.52.2:6000"));
            assert!(actions(&mut m).is_empty());
            // The peer answers: checks from the new port.
            m.handle_message(t, &candidates(true, &["198.18.50.1:5000"]));
            t += Duration::from_millis(50);
            m.handle_timeout(t);
            let (_, check) = probes_via(&actions(&mut m));
            assert_eq!(check, vec![Some(port)], "round {round}");
            assert_eq!(m.via(), Some(port));
        }
        // After the last rebind failed too, the stale state is waited out.
        let end = t + check_phase + Duration::from_secs(5);
        while t < end {
            t += Duration::from_millis(50);
            m.handle_timeout(t);
            let acts = actions(&mut m);
            assert!(!acts.iter().any(|a| matches!(a, PathAction::Rebind)));
            if t > start + Duration::from_secs(60) {
                break;
            }
        }
        assert!(m.quiet_until.is_some(), "quiet after {MAX_REBINDS} rebinds");
    }

    /// A mid-call update from the peer: `fresh` when its candidates are a fresh port's.
    fn update_from(fresh: bool, addrs: &[&str]) -> Message<'static> {
        let Message::CallCandidates {
            call,
            opened,
            candidates,
            ..
        } = candidates(true, addrs)
        else {
            unreachable!()
        };
        Message::CallCandidates {
            call,
            opened,
            update: true,
            fresh,
            candidates,
        }
    }

    /// The candidate messages among `acts`: (update, fresh) of each.
    fn sent_flags(acts: &[PathAction]) -> Vec<(bool, bool)> {
        acts.iter()
            .filter_map(|a| match a {
                PathAction::Send(Message::CallCandidates { update, fresh, .. }) => {
                    Some((*update, *fresh))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_callee_follows_a_fresh_port_with_one_of_its_own_before_it_answers() {
        let start = Instant::now();
        let mut m = manager(false, start);
        m.set_peer_fresh_ports(true);
        connected(&mut m, start);
        let t = start + Duration::from_secs(5);
        // The caller moved to a fresh port: no answer, no probe, a port of our own first.
        m.handle_message(t, &update_from(true, &["198.18.50.1:7000"]));
        let acts = actions(&mut m);
        assert!(matches!(acts[..], [PathAction::Rebind]), "{acts:?}");
        // Its repeats while the port opens change nothing.
        m.handle_message(t, &update_from(true, &["198.18.50.1:7000"]));
        m.handle_timeout(t + Duration::from_millis(100));
        let acts = actions(&mut m);
        assert!(probes_via(&acts) == (vec![], vec![]) && sent_flags(&acts).is_empty());
        // Open: openers from the new port to every caller candidate, then our fresh update.
        let port: SocketAddr = "10.0.0.3:41000".parse().unwrap();
        let t = t + Duration::from_millis(150);
        m.rebound(t, port, reflexive("198.18.51.2:41000"));
        let acts = actions(&mut m);
        assert_eq!(probes_via(&acts), (vec![Some(port); 2], vec![]));
        assert_eq!(sent_flags(&acts), vec![(true, true)]);
        // The caller answers: checks from the new port.
        m.handle_message(t, &candidates(true, &["198.18.50.1:7000"]));
        m.handle_timeout(t + Duration::from_millis(50));
        let (_, check) = probes_via(&actions(&mut m));
        assert!(!check.is_empty() && check.iter().all(|v| *v == Some(port)));
    }

    #[test]
    fn a_callee_that_followed_answers_a_repeated_request_again_without_checking_yet() {
        let start = Instant::now();
        let mut m = manager(false, start);
        m.set_peer_fresh_ports(true);
        connected(&mut m, start);
        let t = start + Duration::from_secs(5);
        m.handle_message(t, &update_from(true, &["198.18.50.1:7000"]));
        assert!(matches!(actions(&mut m)[..], [PathAction::Rebind]));
        let port: SocketAddr = "10.0.0.3:41000".parse().unwrap();
        let t = t + Duration::from_millis(150);
        m.rebound(t, port, reflexive("198.18.51.2:41000"));
        assert_eq!(sent_flags(&actions(&mut m)), vec![(true, true)]);
        // The caller's request again (it crossed our answer): answered again, and no check
        // yet (our probes would reach its NAT before it opened towards our new port).
        m.handle_message(t, &update_from(true, &["198.18.50.1:7000"]));
        m.handle_timeout(t + Duration::from_millis(50));
        let acts = actions(&mut m);
        assert_eq!(sent_flags(&acts), vec![(true, true)]);
        assert!(probes_via(&acts).1.is_empty(), "{acts:?}");
        // Its answer: checks from the new port.
        m.handle_message(t, &candidates(true, &["198.18.50.1:7000"]));
        m.handle_timeout(t + Duration::from_millis(100));
        let (_, check) = probes_via(&actions(&mut m));
        assert!(!check.is_empty() && check.iter().all(|v| *v == Some(port)));
    }

    #[test]
    fn a_callee_that_cannot_open_a_port_answers_a_fresh_port_from_its_own() {
        let start = Instant::now();
        let mut m = manager(false, start);
        connected(&mut m, start);
        let t = start + Duration::from_secs(5);
        m.handle_message(t, &update_from(true, &["198.18.50.1:7000"]));
        assert!(matches!(actions(&mut m)[..], [PathAction::Rebind]));
        m.rebind_failed(t);
        let acts = actions(&mut m);
        assert_eq!(probes_via(&acts).0, vec![None; 2]);
        assert_eq!(sent_flags(&acts), vec![(false, false)]);
        m.handle_timeout(t + Duration::from_millis(50));
        assert!(!probes_via(&actions(&mut m)).1.is_empty());
    }

    #[test]
    fn the_caller_asks_again_when_the_callee_updates_its_old_port_instead_of_following() {
        let (mut m, t0) = chose_direct(Instant::now());
        let mut t = t0;
        let mut rebind_at = None;
        m.set_peer_fresh_ports(true);
        while rebind_at.is_none() && t < t0 + Duration::from_secs(5) {
            t += Duration::from_millis(10);
            if m.active().0.is_relayed() {
                m.heard(t);
            }
            m.handle_timeout(t);
            if actions(&mut m).contains(&PathAction::Rebind) {
                rebind_at = Some(t);
            }
        }
        assert!(
            rebind_at.is_some(),
            "the dead direct path leads to a fresh port"
        );
        let port: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        m.rebound(t, port, reflexive("198.18.51.2:40000"));
        assert_eq!(sent_flags(&actions(&mut m)), vec![(true, true)]);
        // The callee's NAT restarted: it announces its old port's new mapping, unaware.
        m.handle_message(t, &update_from(false, &["198.18.50.1:6100"]));
        let acts = actions(&mut m);
        assert_eq!(sent_flags(&acts), vec![(true, true)], "asked again");
        m.handle_timeout(t + Duration::from_millis(50));
        assert!(probes_via(&actions(&mut m)).1.is_empty(), "no checks yet");
        // It follows: its fresh port's update is the answer.
        m.handle_message(t, &update_from(true, &["198.18.50.1:7000"]));
        let acts = actions(&mut m);
        assert_eq!(sent_flags(&acts), vec![(false, false)], "answered");
        assert_eq!(
            probes_via(&acts).0,
            vec![Some(port)],
            "opened towards it first"
        );
        m.handle_timeout(t + Duration::from_millis(100));
        assert!(!probes_via(&actions(&mut m)).1.is_empty());
    }

    #[test]
    fn a_rebind_waits_until_the_relay_is_heard_again_and_spends_no_try_meanwhile() {
        let (mut m, t0) = chose_direct(Instant::now());
        // The direct path dies and nothing arrives through the relay either (our NAT is
        // down): no rebind, however long it lasts.
        let mut t = t0;
        while t < t0 + Duration::from_secs(30) {
            t += Duration::from_millis(10);
            m.handle_timeout(t);
            assert!(
                !actions(&mut m).contains(&PathAction::Rebind),
                "at {:?}",
                t - t0
            );
        }
        assert!(m.active().0.is_relayed());
        // The relay is heard again: a rebind at once, the first of MAX_REBINDS.
        m.heard(t);
        t += PathConfig::default().check_interval;
        m.handle_timeout(t);
        assert!(actions(&mut m).contains(&PathAction::Rebind));
        assert_eq!(m.rebinds, 1);
    }

    #[test]
    fn a_peer_cannot_make_the_callee_open_ports_at_its_pace() {
        let start = Instant::now();
        let mut m = manager(false, start);
        m.set_peer_fresh_ports(true);
        connected(&mut m, start);
        // A fresh update with new addresses every 10 ms for 10 s; every port opens at once.
        let (mut follows, mut answers) = (Vec::new(), 0);
        let mut t = start;
        for i in 0..1000u32 {
            t += Duration::from_millis(10);
            let addr = format!("198.18.60.{}:{}", i % 200 + 1, 7000 + i);
            m.handle_message(t, &update_from(true, &[addr.as_str()]));
            let acts = actions(&mut m);
            answers += sent_flags(&acts).len();
            if acts.contains(&PathAction::Rebind) {
                follows.push(t);
                m.rebound(
                    t,
                    format!("10.0.0.3:{}", 41000 + i).parse().unwrap(),
                    Vec::new(),
                );
                actions(&mut m);
            }
        }
        assert!(
            follows.len() as u32 <= MAX_REBINDS,
            "{} follows",
            follows.len()
        );
        let min_gap = PathConfig::default().rebind_after.unwrap();
        assert!(
            follows.windows(2).all(|w| w[1] - w[0] >= min_gap),
            "{follows:?}"
        );
        // The others are answered from the port it has, as any update is.
        assert!(answers >= 900, "{answers} answers");
    }

    #[test]
    fn a_failed_rebind_is_tried_again_then_the_dead_path_waits_as_before() {
        let (mut m, t0) = chose_direct(Instant::now());
        // The direct path dies: the relay at once, a rebind a second later.
        let mut t = t0;
        let mut asked = Vec::new();
        while t < t0 + Duration::from_secs(20) {
            t += Duration::from_millis(10);
            if m.active().0.is_relayed() {
                m.heard(t);
            }
            m.handle_timeout(t);
            for a in actions(&mut m) {
                if matches!(a, PathAction::Rebind) {
                    asked.push(t);
                    // The NAT is down: the port's super node never answers.
                    m.rebind_failed(t);
                }
            }
        }
        assert_eq!(asked.len(), MAX_REBINDS as usize, "{asked:?}");
        assert!(m.active().0.is_relayed());
        // Then, as without rebinds, quiet once `dead_wait` passed.
        assert!(m.quiet_until.is_some());
    }

    #[test]
    fn new_peer_candidates_mid_call_are_opened_answered_and_checked() {
        let start = Instant::now();
        let mut m = manager(false, start);
        connected(&mut m, start);
        // The same candidates repeated: nothing new.
        m.handle_message(start, &candidates(true, &["198.18.50.1:5000"]));
        assert_eq!(sorted(&actions(&mut m)), (vec![], vec![], 0));
        // The peer moved to a new port.
        let t = start + Duration::from_secs(5);
        m.handle_message(t, &candidates(true, &["198.18.50.1:5001"]));
        let mut acts = actions(&mut m);
        m.handle_timeout(t);
        acts.extend(actions(&mut m));
        let (open, check, sent) = sorted(&acts);
        let new: SocketAddr = "198.18.50.1:5001".parse().unwrap();
        assert_eq!(open, vec![new], "opened towards the new one only");
        assert_eq!(sent, 1, "answered");
        assert!(check.contains(&new), "checked: {check:?}");
        // The opener goes before the answer.
        let first_open = acts
            .iter()
            .position(|a| matches!(a, PathAction::Probe { ttl: Some(_), .. }));
        let answer = acts
            .iter()
            .position(|a| matches!(a, PathAction::Send(Message::CallCandidates { .. })));
        assert!(first_open < answer);
    }

    fn direct() -> Path {
        Path::udp("198.18.50.1:5000".parse().unwrap())
    }

    /// A controlling manager that chose the direct path at the returned instant.
    fn chose_direct(start: Instant) -> (PathManager, Instant) {
        let mut m = manager(true, start);
        m.handle_message(
            start,
            &Message::CallCandidates {
                call: CallId([1; 16]),
                opened: true,
                update: false,
                fresh: false,
                candidates: vec![Candidate {
                    kind: CandidateKind::Reflexive,
                    addr: direct().peer_udp().unwrap(),
                }],
            },
        );
        let t = start + Duration::from_millis(50);
        m.probe_answered(t, &direct(), Duration::from_millis(40));
        let t = t + m.cfg.settle;
        m.handle_timeout(t);
        assert_eq!(m.active(), (&direct(), PathKind::Direct));
        actions(&mut m);
        (m, t)
    }

    #[test]
    fn the_controlling_side_is_not_pulled_back_to_the_relay_by_a_peer_that_has_not_followed() {
        let start = Instant::now();
        let (mut m, t) = chose_direct(start);
        // The peer's frames still come through the relay for a moment: the endpoint moved the
        // session there, the manager moves it back.
        m.path_changed(t + Duration::from_millis(30), &relay());
        assert_eq!(m.active().1, PathKind::Direct);
        assert_eq!(actions(&mut m), vec![PathAction::UsePath(direct())]);
        // A peer that still sends through the relay after `dead_after` cannot follow: go to it.
        m.path_changed(t + m.cfg.dead_after, &relay());
        assert_eq!(m.active().1, PathKind::RelayUdp);
        assert!(matches!(
            actions(&mut m)[..],
            [PathAction::Event(PathEvent::Switched {
                reason: SwitchReason::Peer,
                ..
            })]
        ));
    }

    #[test]
    fn this_side_keeps_its_own_leg_of_the_relay() {
        let start = Instant::now();
        let tcp_leg = Path::Relayed {
            relay: Destination::Stream(crate::sansio::StreamId::local(3)),
            channel: 7,
        };
        let mut m = PathManager::new(
            PathConfig::default(),
            CallId([1; 16]),
            false,
            tcp_leg.clone(),
            Vec::new(),
            start,
        );
        assert_eq!(m.active().1, PathKind::RelayTcp);
        m.set_relay(start, relay());
        assert_eq!(m.active(), (&relay(), PathKind::RelayUdp));
        actions(&mut m);
        // Frames the relay forwarded on the TCP leg before it heard from the UDP one.
        m.path_changed(start, &tcp_leg);
        assert_eq!(m.active(), (&relay(), PathKind::RelayUdp));
        assert_eq!(actions(&mut m), vec![PathAction::UsePath(relay())]);
        // On a direct path, the peer going back to the relay is followed, on the UDP leg.
        m.path_changed(start, &direct());
        assert_eq!(m.active().1, PathKind::Direct);
        actions(&mut m);
        m.path_changed(start, &tcp_leg);
        assert_eq!(m.active(), (&relay(), PathKind::RelayUdp));
        assert_eq!(actions(&mut m)[0], PathAction::UsePath(relay()));
    }

    #[test]
    fn a_host_candidate_first_seen_as_peer_reflexive_is_still_on_the_lan() {
        let start = Instant::now();
        let mut m = manager(false, start);
        let lan: SocketAddr = "10.0.0.3:5000".parse().unwrap();
        let path = Path::udp(lan);
        // On one LAN the peer's opener arrives before its candidates.
        m.probe_received(start, &path);
        m.handle_message(
            start,
            &Message::CallCandidates {
                call: CallId([1; 16]),
                opened: true,
                update: false,
                fresh: false,
                candidates: vec![Candidate {
                    kind: CandidateKind::Host,
                    addr: lan,
                }],
            },
        );
        m.path_changed(start, &path);
        assert_eq!(m.active().1, PathKind::DirectLan);
    }
}
