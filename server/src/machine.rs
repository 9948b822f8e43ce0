//! The login server's protocol machine.
//!
//! Sans-IO like every machine: TLS-decrypted stream bytes come in through
//! [`Machine::handle_input`], framed responses go out through [`Machine::poll_transmit`].
//! What it cannot do without I/O or heavy CPU (password hashing, the account database) it hands
//! out as [`WorkItem`]s through [`LoginServer::poll_work`]; the runtime runs them on worker
//! threads, never on the I/O thread, and returns each [`JobOutcome`] with
//! [`LoginServer::handle_job`]. Everything else is decided here: the request order, name and
//! password policy, the version verdict, proofs of possession, throttling, certificate issuance
//! and signing revocation pages.
//!
//! Throttling: failed password checks are counted per account and per source address. After
//! a few free failures each further one doubles a back-off (1 s, 2 s, 4 s, ... up to a cap),
//! during which requests that check that account's password, or come from that address, are
//! refused with [`LoginError::Throttled`] without touching the password. Scripted guessing
//! from one address and against one account are both slowed; state is bounded.
//!
//! Admission: every request that costs an Argon2 hash (registration, login, password change,
//! revocation, deletion), successful or not, takes a token from its source address's bucket
//! ([`AdmissionConfig`]), and at most [`AdmissionConfig::max_in_flight`] such jobs wait or run
//! at once; past either limit the request is refused with [`LoginError::Throttled`] before any
//! hashing, so no set of connections can queue more hashing than the workers get through.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use natter_core::crypto::{
    dh_public_of, verify_dh_proof, verify_signature, Authority, DeviceId, TrustedAuthorities,
    UnixTime, UserName,
};
use natter_core::login::proto::{
    proof_message, DeviceKeys, DeviceSummary, LoginError, Request, Response, RevocationPage,
    RevokedDevice, Version, VersionStatus, DH_PROOF_CONTEXT, MAX_REVOCATIONS_PER_PAGE,
    PROOF_CONTEXT, REVOCATION_CONTEXT,
};
use natter_core::rng::Rng;
use natter_core::sansio::{Destination, Input, Machine, StreamId, Transmit};
use natter_core::wire::frame::{self, FrameDecoder};

use crate::store::StoredBuddyList;

/// A password in memory: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Failure counting and back-off settings.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures per account before back-off starts.
    pub free_per_account: u32,
    /// Failures per source address before back-off starts.
    pub free_per_address: u32,
    /// First back-off; doubles with each further failure.
    pub base: Duration,
    /// Longest back-off.
    pub max: Duration,
    /// A counter is forgotten after this long without failures.
    pub forget_after: Duration,
    /// Most accounts and most addresses tracked at once.
    pub capacity: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_per_account: 5,
            free_per_address: 20,
            base: Duration::from_secs(1),
            max: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            capacity: 100_000,
        }
    }
}

/// Admission of requests that cost a password hash.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Hashing requests one address may make in a burst (default 30: a NAT of many users).
    /// Loopback addresses (the operator's own tools, tests) have no bucket.
    pub burst: u32,
    /// And then one every this long (default 1 s: one Argon2 hash of about 50 ms a second
    /// per address, so it takes many addresses to keep even one worker busy).
    pub refill: Duration,
    /// Most hashing jobs queued or running at once, whatever their source (default 64).
    pub max_in_flight: usize,
    /// Most addresses tracked at once (default 100,000; full buckets are forgotten first, then
    /// the one counted longest ago).
    pub capacity: usize,
    /// New accounts and new devices (certifications of a key the server has not seen) one
    /// address may create in a burst (default 10), and then one every
    /// [`AdmissionConfig::identity_refill`]. Each new device key is a fresh, unpredictable
    /// position in the super nodes' index ring (its certificate's ring salt), so these
    /// limits are what it costs to try for a position next to a victim's records
    /// (ARCHITECTURE.md, threat model). Loopback addresses are exempt.
    pub identity_burst: u32,
    /// See [`AdmissionConfig::identity_burst`] (default 1 hour).
    pub identity_refill: Duration,
    /// New devices one account may add in 24 hours, whatever the addresses (default 5;
    /// revoked devices count too).
    pub new_devices_per_day: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            burst: 30,
            refill: Duration::from_secs(1),
            max_in_flight: 64,
            capacity: 100_000,
            identity_burst: 10,
            identity_refill: Duration::from_secs(3600),
            new_devices_per_day: 5,
        }
    }
}

/// Token buckets per source address.
#[derive(Debug, Default)]
struct Admission {
    /// Tokens left and when they were counted.
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Admission {
    /// Take a token for `ip` from a bucket of `burst` refilled one every `refill` (an IPv6
    /// address counts by its /64: one subscriber's whole block); when there is none, how long
    /// until there is.
    fn take(
        &mut self,
        now: Instant,
        ip: IpAddr,
        (burst, refill): (u32, Duration),
        capacity: usize,
    ) -> Result<(), Duration> {
        let ip = match ip {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        let burst = f64::from(burst.max(1));
        let per_sec = 1.0 / refill.as_secs_f64().max(1e-3);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= capacity {
            // Forget the addresses whose buckets have refilled: they lose nothing.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
            if self.buckets.len() >= capacity {
                // Full of addresses still waiting: forget the one counted longest ago rather
                // than refuse every new address (one party with many addresses must not lock
                // everyone else out).
                if let Some(oldest) = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(ip, _)| *ip)
                {
                    self.buckets.remove(&oldest);
                }
            }
        }
        let (tokens, at) = self.buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_sec))
        }
    }
}

impl Admission {
    /// Return a token taken for `ip` that was not used.
    fn give_back(&mut self, ip: IpAddr) {
        let ip = match ip {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        if let Some((tokens, _)) = self.buckets.get_mut(&ip) {
            *tokens += 1.0;
        }
    }
}

/// Configuration of a [`LoginServer`].
pub struct LoginServerConfig {
    /// The signing key; its public half must be in `trusted`.
    pub authority: Authority,
    /// Authority keys whose certificates may be renewed (current and previous, for rotation).
    pub trusted: TrustedAuthorities,
    /// Randomness for challenges.
    pub seed: [u8; 32],
    /// Wall-clock time at `clock_anchor` (certificate validity is wall-clock time).
    pub wall_anchor: UnixTime,
    /// The instant matching `wall_anchor`.
    pub clock_anchor: Instant,
    /// Clients older than this get [`VersionStatus::UpgradeRequired`].
    pub minimum_version: Version,
    /// Clients older than this get [`VersionStatus::UpgradeRecommended`].
    pub recommended_version: Version,
    /// How long a certificate is valid (default 24 h).
    pub certificate_lifetime: Duration,
    /// How long after expiry a certificate may still be renewed without the password
    /// (default 30 days); later renewals are refused with [`LoginError::RenewalExpired`].
    pub renewal_grace: Duration,
    /// Certificates start this long before issuance, for clients whose clocks run behind
    /// (default 60 s).
    pub clock_skew_allowance: Duration,
    /// Shortest password accepted (default 10).
    pub min_password_len: usize,
    /// Failure throttling.
    pub throttle: ThrottleConfig,
    /// A connection idle this long is closed (default 30 s).
    pub idle_timeout: Duration,
    /// Requests queued per connection while one is being worked on (default 4).
    pub max_queued: usize,
    /// Admission of requests that cost a password hash.
    pub admission: AdmissionConfig,
}

impl std::fmt::Debug for LoginServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServerConfig")
            .field("authority", &self.authority)
            .field("minimum_version", &self.minimum_version)
            .field("recommended_version", &self.recommended_version)
            .finish_non_exhaustive()
    }
}

impl LoginServerConfig {
    /// Defaults around an authority key.
    pub fn new(authority: Authority, seed: [u8; 32], wall: UnixTime, now: Instant) -> Self {
        let trusted = TrustedAuthorities::new([authority.public()]);
        Self {
            authority,
            trusted,
            seed,
            wall_anchor: wall,
            clock_anchor: now,
            minimum_version: Version::new(0, 1, 0),
            recommended_version: Version::new(0, 1, 0),
            certificate_lifetime: Duration::from_secs(24 * 3600),
            renewal_grace: Duration::from_secs(30 * 24 * 3600),
            clock_skew_allowance: Duration::from_secs(60),
            min_password_len: 10,
            throttle: ThrottleConfig::default(),
            idle_timeout: Duration::from_secs(30),
            max_queued: 4,
            admission: AdmissionConfig::default(),
        }
    }
}

/// Identifies a job handed to the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobId(pub u64);

/// The limits on a login that adds a device the account has not had before
/// ([`AdmissionConfig::new_devices_per_day`] and [`AdmissionConfig::identity_burst`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewDeviceLimit {
    /// New devices the account may add in 24 hours.
    pub per_account_per_day: u32,
    /// Set when the request's address has used up its new identities: seconds until it
    /// may add one again.
    pub address_retry_after: Option<u32>,
}

/// Work the runtime must do with the account store and the password hasher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Hash the password and create the account.
    Register {
        /// Canonical name.
        user: UserName,
        /// Password.
        password: Secret,
    },
    /// Check the password, check the device is not revoked or someone else's, record it.
    Login {
        /// Account.
        user: UserName,
        /// Password.
        password: Secret,
        /// The device's id.
        device: DeviceId,
        /// Its keys.
        keys: DeviceKeys,
        /// What limits adding it when the account has not had it before.
        new_device: NewDeviceLimit,
    },
    /// Check the device is still this user's and not revoked, and record the renewal.
    Renew {
        /// Account.
        user: UserName,
        /// Device.
        device: DeviceId,
        /// Ed25519 key.
        signing_public: [u8; 32],
        /// X25519 key.
        dh_public: [u8; 32],
    },
    /// Check the old password, hash and store the new one; with `keep_only`, revoke every
    /// other device of the account.
    ChangePassword {
        /// Account.
        user: UserName,
        /// Current password.
        old: Secret,
        /// New password.
        new: Secret,
        /// The only device that stays certified, if the others are to be revoked.
        keep_only: Option<DeviceId>,
    },
    /// Check the password and revoke the device.
    RevokeDevice {
        /// Account.
        user: UserName,
        /// Password.
        password: Secret,
        /// Device.
        device: DeviceId,
    },
    /// Check the password and delete the account.
    DeleteAccount {
        /// Account.
        user: UserName,
        /// Password.
        password: Secret,
    },
    /// Read revocations after `since`.
    Revocations {
        /// Last known serial.
        since: u64,
        /// Page size.
        limit: usize,
    },
    /// List the account's devices for one of them (its certificate was checked).
    Devices {
        /// Account.
        user: UserName,
        /// The asking device: must be the account's and not revoked.
        device: DeviceId,
    },
    /// Read the account's buddy-list backup for one of its devices (certificate checked).
    GetBuddyList {
        /// Account.
        user: UserName,
        /// The asking device: must be the account's and not revoked.
        device: DeviceId,
    },
    /// Store a buddy-list backup in place of version `base` (certificate checked).
    PutBuddyList {
        /// Account.
        user: UserName,
        /// The asking device: must be the account's and not revoked.
        device: DeviceId,
        /// The version replaced.
        base: u64,
        /// What to store (an empty envelope keeps the stored one).
        list: StoredBuddyList,
    },
    /// Leave a contact request from `user` for `to` (certificate checked).
    SendContactRequest {
        /// The sender's account.
        user: UserName,
        /// The asking device: must be the account's and not revoked.
        device: DeviceId,
        /// The recipient.
        to: UserName,
        /// The note.
        note: String,
        /// An acceptance of the recipient's request.
        accepting: bool,
    },
    /// Read the contact requests waiting for the account (certificate checked).
    GetContactRequests {
        /// Account.
        user: UserName,
        /// The asking device: must be the account's and not revoked.
        device: DeviceId,
    },
    /// Delete answered contact requests (certificate checked).
    DeleteContactRequests {
        /// Account.
        user: UserName,
        /// The asking device: must be the account's and not revoked.
        device: DeviceId,
        /// The requests.
        ids: Vec<u64>,
    },
}

impl Job {
    /// Whether the job costs an Argon2 hash (or two).
    fn hashes(&self) -> bool {
        matches!(self, Job::Register { .. }) || self.checks_password_of().is_some()
    }

    /// The account whose password this job checks, for throttling.
    fn checks_password_of(&self) -> Option<&UserName> {
        match self {
            Job::Login { user, .. }
            | Job::ChangePassword { user, .. }
            | Job::RevokeDevice { user, .. }
            | Job::DeleteAccount { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// A job with its id and the wall-clock time to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// Return it with the outcome.
    pub id: JobId,
    /// What to do.
    pub job: Job,
    /// Wall-clock time of the request.
    pub wall: UnixTime,
}

/// What the runtime found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done.
    Ok,
    /// A login done that added a device the account had not had before.
    DeviceAdded,
    /// Revocations read.
    Revocations {
        /// Entries, ascending.
        entries: Vec<RevokedDevice>,
        /// No more after these.
        complete: bool,
    },
    /// The account's devices (in use first, then the most recently revoked; at most
    /// [`MAX_DEVICES_LISTED`](natter_core::login::proto::MAX_DEVICES_LISTED)).
    Devices(Vec<DeviceSummary>),
    /// The account's buddy-list backup (`None`: none stored).
    BuddyList(Option<StoredBuddyList>),
    /// The contact requests waiting for the account, oldest first.
    ContactRequests(Vec<natter_core::login::proto::ContactRequest>),
    /// Refused: [`LoginError::WrongPassword`], `UnknownUser`, `NameTaken`, `Revoked`,
    /// `UnknownDevice`, `BadProof` (keys differing from those recorded for the device)
    /// or `Server`.
    Failed(LoginError),
}

/// What the login server reports (for logs, metrics and the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginServerEvent {
    /// A client said hello.
    Hello {
        /// Connection.
        stream: StreamId,
        /// Client version.
        version: Version,
        /// First start after installation.
        first_start: bool,
        /// The verdict.
        status: VersionStatus,
    },
    /// An account was created.
    Registered {
        /// Who.
        user: UserName,
    },
    /// A device was certified.
    Certified {
        /// Who.
        user: UserName,
        /// Which device.
        device: DeviceId,
        /// By renewal (no password).
        renewal: bool,
    },
    /// A request was refused.
    Refused {
        /// Connection.
        stream: StreamId,
        /// Why.
        error: LoginError,
    },
    /// The driver must close this connection once its pending transmits are written.
    Close {
        /// Connection.
        stream: StreamId,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginServerStats {
    /// Requests decoded.
    pub requests: u64,
    /// Frames that could not be decoded (the connection was closed).
    pub malformed: u64,
    /// Requests refused by throttling (failures' back-off or admission).
    pub throttled: u64,
    /// Of those, hashing requests refused by admission (the address's bucket was empty or
    /// too many hashing jobs were in flight).
    pub not_admitted: u64,
    /// Failed password checks.
    pub password_failures: u64,
    /// Certificates issued.
    pub certified: u64,
    /// Connections closed for idleness or overflow.
    pub dropped_connections: u64,
}

struct Conn {
    remote: SocketAddr,
    decoder: FrameDecoder,
    /// After Hello: the version verdict, the challenge and the X25519 secret this connection's
    /// proofs of possession are checked against.
    hello: Option<(VersionStatus, [u8; 32], [u8; 32])>,
    busy: Option<JobId>,
    queued: VecDeque<Request>,
    last_activity: Instant,
    closing: bool,
}

struct Pending {
    stream: StreamId,
    job: Job,
    renewal: bool,
    /// The address whose new identity this job holds (given back unless one was added).
    identity: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
    last: Instant,
}

/// Failure counters keyed by account or address.
#[derive(Debug)]
struct Throttle<K> {
    free: u32,
    map: HashMap<K, Failures>,
}

impl<K: std::hash::Hash + Eq + Clone> Throttle<K> {
    fn new(free: u32) -> Self {
        Self {
            free,
            map: HashMap::new(),
        }
    }

    fn blocked(&self, now: Instant, key: &K) -> Option<Duration> {
        self.map
            .get(key)
            .filter(|f| f.blocked_until > now)
            .map(|f| f.blocked_until - now)
    }

    fn fail(&mut self, now: Instant, key: K, cfg: &ThrottleConfig) {
        if self.map.len() >= cfg.capacity && !self.map.contains_key(&key) {
            self.map
                .retain(|_, f| now.saturating_duration_since(f.last) < cfg.forget_after);
            if self.map.len() >= cfg.capacity {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.map.remove(&k);
                }
            }
        }
        let f = self.map.entry(key).or_insert(Failures {
            count: 0,
            blocked_until: now,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= cfg.forget_after {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count > self.free {
            let exp = (f.count - self.free - 1).min(20);
            let delay = cfg.base.saturating_mul(1 << exp).min(cfg.max);
            f.blocked_until = now + delay;
        }
    }

    fn succeed(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// The login server machine. See the [module documentation](self).
pub struct LoginServer {
    cfg: LoginServerConfig,
    rng: Rng,
    conns: HashMap<StreamId, Conn>,
    pending: HashMap<JobId, Pending>,
    next_job: u64,
    by_account: Throttle<UserName>,
    by_address: Throttle<IpAddr>,
    admission: Admission,
    /// New accounts and devices per address.
    identities: Admission,
    /// Login jobs in flight per account: each may add a device, so each takes one from the
    /// others' daily allowance (workers run them in parallel).
    logins_in_flight: HashMap<UserName, u32>,
    /// Hashing jobs queued or running.
    hashing: usize,
    work: VecDeque<WorkItem>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LoginServerEvent>,
    stats: LoginServerStats,
}

impl std::fmt::Debug for LoginServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginServer")
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Whether a password meets the policy for `user`.
pub fn password_acceptable(user: &UserName, password: &str, min_len: usize) -> bool {
    let len = password.chars().count();
    len >= min_len
        && password.len() <= natter_core::login::proto::MAX_PASSWORD
        && !password.eq_ignore_ascii_case(user.as_str())
}

impl LoginServer {
    /// A new server.
    pub fn new(cfg: LoginServerConfig) -> Self {
        Self {
            rng: Rng::from_seed_bytes(cfg.seed),
            by_account: Throttle::new(cfg.throttle.free_per_account),
            by_address: Throttle::new(cfg.throttle.free_per_address),
            admission: Admission::default(),
            identities: Admission::default(),
            logins_in_flight: HashMap::new(),
            hashing: 0,
            cfg,
            conns: HashMap::new(),
            pending: HashMap::new(),
            next_job: 0,
            work: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: LoginServerStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> LoginServerStats {
        self.stats
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The authority's public key.
    pub fn authority_public(&self) -> [u8; 32] {
        self.cfg.authority.public()
    }

    /// The next job for a worker thread.
    pub fn poll_work(&mut self) -> Option<WorkItem> {
        self.work.pop_front()
    }

    fn wall(&self, now: Instant) -> UnixTime {
        UnixTime(
            self.cfg.wall_anchor.0
                + now
                    .saturating_duration_since(self.cfg.clock_anchor)
                    .as_secs(),
        )
    }

    fn respond(&mut self, stream: StreamId, response: &Response) {
        let mut body = BytesMut::with_capacity(64);
        response.encode(&mut body);
        let mut framed = BytesMut::with_capacity(body.len() + 2);
        if frame::encode(&body, &mut framed).is_err() {
            return;
        }
        if let Response::Error(error) = response {
            self.events.push_back(LoginServerEvent::Refused {
                stream,
                error: *error,
            });
        }
        self.transmits.push_back(Transmit {
            destination: Destination::Stream(stream),
            source: None,
            payload: framed.freeze(),
            ttl: None,
        });
    }

    fn close(&mut self, stream: StreamId) {
        if let Some(c) = self.conns.get_mut(&stream) {
            if !c.closing {
                c.closing = true;
                self.events.push_back(LoginServerEvent::Close { stream });
            }
        }
    }

    fn fail(&mut self, stream: StreamId, error: LoginError) {
        self.respond(stream, &Response::Error(error));
    }

    fn on_bytes(&mut self, now: Instant, stream: StreamId, remote: SocketAddr, data: &[u8]) {
        let conn = self.conns.entry(stream).or_insert_with(|| Conn {
            remote,
            decoder: FrameDecoder::new(usize::from(u16::MAX)),
            hello: None,
            busy: None,
            queued: VecDeque::new(),
            last_activity: now,
            closing: false,
        });
        if conn.closing {
            return;
        }
        conn.last_activity = now;
        conn.decoder.push(data);
        let mut requests = Vec::new();
        let mut broken = false;
        loop {
            match conn.decoder.next_frame() {
                Ok(Some(f)) => match Request::decode(&f) {
                    Ok(r) => requests.push(r),
                    Err(_) => {
                        broken = true;
                        break;
                    }
                },
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        for r in requests {
            self.stats.requests += 1;
            let Some(conn) = self.conns.get_mut(&stream) else {
                return;
            };
            if conn.busy.is_some() {
                if conn.queued.len() >= self.cfg.max_queued {
                    self.stats.dropped_connections += 1;
                    self.fail(stream, LoginError::Protocol);
                    self.close(stream);
                    return;
                }
                conn.queued.push_back(r);
            } else {
                self.on_request(now, stream, r);
            }
        }
        if broken {
            self.stats.malformed += 1;
            self.fail(stream, LoginError::Protocol);
            self.close(stream);
        }
    }

    fn on_request(&mut self, now: Instant, stream: StreamId, request: Request) {
        let Some(conn) = self.conns.get(&stream) else {
            return;
        };
        let remote = conn.remote;
        let hello = conn.hello;
        let wall = self.wall(now);
        let (status, challenge, secret) = match (&request, hello) {
            (
                Request::Hello {
                    version,
                    first_start,
                },
                None,
            ) => {
                let status = if *version < self.cfg.minimum_version {
                    VersionStatus::UpgradeRequired {
                        minimum: self.cfg.minimum_version,
                    }
                } else if *version < self.cfg.recommended_version {
                    VersionStatus::UpgradeRecommended {
                        latest: self.cfg.recommended_version,
                    }
                } else {
                    VersionStatus::Ok
                };
                let mut challenge = [0u8; 32];
                self.rng.fill(&mut challenge);
                let mut secret = [0u8; 32];
                self.rng.fill(&mut secret);
                if let Some(c) = self.conns.get_mut(&stream) {
                    c.hello = Some((status, challenge, secret));
                }
                self.events.push_back(LoginServerEvent::Hello {
                    stream,
                    version: *version,
                    first_start: *first_start,
                    status,
                });
                self.respond(
                    stream,
                    &Response::Hello {
                        status,
                        challenge,
                        server_key: dh_public_of(&secret),
                    },
                );
                return;
            }
            (Request::Hello { .. }, Some(_)) | (_, None) => {
                self.fail(stream, LoginError::Protocol);
                self.close(stream);
                return;
            }
            (_, Some(h)) => h,
        };
        if matches!(status, VersionStatus::UpgradeRequired { .. }) {
            self.fail(stream, LoginError::UpgradeRequired);
            return;
        }
        let parse_user = |name: &str| UserName::parse(name).map_err(|_| LoginError::InvalidName);
        // Requests from a certified device: its proofs of possession, checked once here.
        let proved = request
            .proved_by()
            .is_none_or(|(certificate, proof, dh_proof)| {
                self.holds(certificate, wall, &challenge, &secret, proof, dh_proof)
            });
        let result: Result<(Job, bool), LoginError> = match request {
            _ if !proved => Err(LoginError::BadProof),
            Request::Hello { .. } => return,
            Request::Register { user, password } => parse_user(&user).and_then(|user| {
                if password_acceptable(&user, &password, self.cfg.min_password_len) {
                    Ok((
                        Job::Register {
                            user,
                            password: Secret(password),
                        },
                        false,
                    ))
                } else {
                    Err(LoginError::WeakPassword)
                }
            }),
            Request::Login {
                user,
                password,
                device,
            } => parse_user(&user).and_then(|user| {
                let msg =
                    proof_message(&challenge, &user, &device.signing_public, &device.dh_public);
                if verify_signature(&device.signing_public, PROOF_CONTEXT, &msg, &device.proof)
                    && verify_dh_proof(
                        &secret,
                        &device.dh_public,
                        DH_PROOF_CONTEXT,
                        &msg,
                        &device.dh_proof,
                    )
                {
                    Ok((
                        Job::Login {
                            device: DeviceId::from_signing_key(&device.signing_public),
                            user,
                            password: Secret(password),
                            keys: device,
                            new_device: NewDeviceLimit {
                                per_account_per_day: self.cfg.admission.new_devices_per_day,
                                address_retry_after: None,
                            },
                        },
                        false,
                    ))
                } else {
                    Err(LoginError::BadProof)
                }
            }),
            Request::Renew {
                certificate,
                proof,
                dh_proof,
            } => {
                // The signature and binding are checked at a moment inside the certificate's
                // validity (now, or its last second once expired), so an expired certificate
                // still proves what it said; how long ago it expired is checked separately.
                let check_at = UnixTime(wall.0.min(certificate.not_after.0));
                let grace_end = certificate
                    .not_after
                    .0
                    .saturating_add(self.cfg.renewal_grace.as_secs());
                if !self.holds(
                    &certificate,
                    check_at,
                    &challenge,
                    &secret,
                    &proof,
                    &dh_proof,
                ) {
                    Err(LoginError::BadProof)
                } else if wall.0 > grace_end {
                    Err(LoginError::RenewalExpired)
                } else {
                    Ok((
                        Job::Renew {
                            user: certificate.user.clone(),
                            device: certificate.device,
                            signing_public: certificate.signing_public,
                            dh_public: certificate.dh_public,
                        },
                        true,
                    ))
                }
            }
            Request::Devices { certificate, .. } => Ok((
                Job::Devices {
                    user: certificate.user.clone(),
                    device: certificate.device,
                },
                false,
            )),
            Request::GetBuddyList { certificate, .. } => Ok((
                Job::GetBuddyList {
                    user: certificate.user.clone(),
                    device: certificate.device,
                },
                false,
            )),
            Request::SendContactRequest {
                certificate,
                to,
                note,
                accepting,
                ..
            } => match UserName::parse(&to) {
                Ok(to) if to != certificate.user => Ok((
                    Job::SendContactRequest {
                        user: certificate.user.clone(),
                        device: certificate.device,
                        to,
                        note,
                        accepting,
                    },
                    false,
                )),
                Ok(_) => Err(LoginError::Protocol),
                Err(_) => Err(LoginError::UnknownUser),
            },
            Request::GetContactRequests { certificate, .. } => Ok((
                Job::GetContactRequests {
                    user: certificate.user.clone(),
                    device: certificate.device,
                },
                false,
            )),
            Request::DeleteContactRequests {
                certificate, ids, ..
            } => Ok((
                Job::DeleteContactRequests {
                    user: certificate.user.clone(),
                    device: certificate.device,
                    ids,
                },
                false,
            )),
            Request::PutBuddyList {
                certificate,
                base,
                version,
                backup,
                envelope,
                ..
            } => {
                if !self.acceptable_backup(&certificate, base, version, &backup, &envelope, wall) {
                    Err(LoginError::Protocol)
                } else {
                    Ok((
                        Job::PutBuddyList {
                            user: certificate.user.clone(),
                            device: certificate.device,
                            base,
                            list: StoredBuddyList {
                                version,
                                backup,
                                envelope,
                            },
                        },
                        false,
                    ))
                }
            }
            Request::ChangePassword {
                user,
                old,
                new,
                keep_only,
            } => parse_user(&user).and_then(|user| {
                if password_acceptable(&user, &new, self.cfg.min_password_len) {
                    Ok((
                        Job::ChangePassword {
                            user,
                            old: Secret(old),
                            new: Secret(new),
                            keep_only,
                        },
                        false,
                    ))
                } else {
                    Err(LoginError::WeakPassword)
                }
            }),
            Request::RevokeDevice {
                user,
                password,
                device,
            } => parse_user(&user).map(|user| {
                (
                    Job::RevokeDevice {
                        user,
                        password: Secret(password),
                        device,
                    },
                    false,
                )
            }),
            Request::DeleteAccount { user, password } => parse_user(&user).map(|user| {
                (
                    Job::DeleteAccount {
                        user,
                        password: Secret(password),
                    },
                    false,
                )
            }),
            Request::Revocations { since } => Ok((
                Job::Revocations {
                    since,
                    limit: MAX_REVOCATIONS_PER_PAGE,
                },
                false,
            )),
        };
        let (mut job, renewal) = match result {
            Ok(j) => j,
            Err(e) => {
                self.fail(stream, e);
                return;
            }
        };
        if let Some(user) = job.checks_password_of() {
            let wait = self
                .by_account
                .blocked(now, user)
                .max(self.by_address.blocked(now, &remote.ip()));
            if let Some(wait) = wait {
                self.stats.throttled += 1;
                let retry_after_secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
                self.fail(stream, LoginError::Throttled { retry_after_secs });
                return;
            }
        }
        if job.hashes() {
            let admitted = if self.hashing >= self.cfg.admission.max_in_flight {
                Err(Duration::from_secs(1))
            } else if remote.ip().is_loopback() {
                Ok(())
            } else {
                let a = &self.cfg.admission;
                self.admission
                    .take(now, remote.ip(), (a.burst, a.refill), a.capacity)
            };
            if let Err(wait) = admitted {
                self.stats.throttled += 1;
                self.stats.not_admitted += 1;
                let retry_after_secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
                self.fail(stream, LoginError::Throttled { retry_after_secs });
                return;
            }
            self.hashing += 1;
        }
        // New accounts and devices per address (loopback is the operator's own): a job that
        // may add one holds one of the address's until it is done.
        let mut identity = None;
        if matches!(job, Job::Register { .. } | Job::Login { .. }) && !remote.ip().is_loopback() {
            let a = &self.cfg.admission;
            let taken = self.identities.take(
                now,
                remote.ip(),
                (a.identity_burst, a.identity_refill),
                a.capacity,
            );
            match (taken, &mut job) {
                (Ok(()), _) => identity = Some(remote.ip()),
                (Err(wait), Job::Login { new_device, .. }) => {
                    new_device.address_retry_after =
                        Some(u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX));
                }
                (Err(wait), _) => {
                    if job.hashes() {
                        self.hashing -= 1;
                    }
                    self.stats.throttled += 1;
                    let retry_after_secs = u32::try_from(wait.as_secs() + 1).unwrap_or(u32::MAX);
                    self.fail(stream, LoginError::Throttled { retry_after_secs });
                    return;
                }
            }
        }
        if let Job::Login {
            user, new_device, ..
        } = &mut job
        {
            let n = self.logins_in_flight.entry(user.clone()).or_default();
            new_device.per_account_per_day = new_device.per_account_per_day.saturating_sub(*n);
            *n += 1;
        }
        let id = JobId(self.next_job);
        self.next_job += 1;
        if let Some(c) = self.conns.get_mut(&stream) {
            c.busy = Some(id);
        }
        self.pending.insert(
            id,
            Pending {
                stream,
                job: job.clone(),
                renewal,
                identity,
            },
        );
        self.work.push_back(WorkItem { id, job, wall });
    }

    /// Return the outcome of a job from [`LoginServer::poll_work`].
    pub fn handle_job(&mut self, now: Instant, id: JobId, outcome: JobOutcome) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        if p.job.hashes() {
            self.hashing = self.hashing.saturating_sub(1);
        }
        if let Job::Login { user, .. } = &p.job {
            if let Some(n) = self.logins_in_flight.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    self.logins_in_flight.remove(user);
                }
            }
        }
        let stream = p.stream;
        let remote = self.conns.get(&stream).map(|c| c.remote);
        let wall = self.wall(now);
        let throttle_cfg = self.cfg.throttle.clone();
        let mut identity_used = false;
        let response = match (outcome, &p.job) {
            (JobOutcome::Failed(e), job) => {
                if matches!(e, LoginError::WrongPassword | LoginError::UnknownUser) {
                    self.stats.password_failures += 1;
                    if let Some(remote) = remote {
                        self.by_address.fail(now, remote.ip(), &throttle_cfg);
                    }
                    if let (LoginError::WrongPassword, Some(user)) = (e, job.checks_password_of()) {
                        self.by_account.fail(now, user.clone(), &throttle_cfg);
                    }
                }
                Response::Error(e)
            }
            (JobOutcome::Ok, Job::Register { user, .. }) => {
                identity_used = true;
                self.events
                    .push_back(LoginServerEvent::Registered { user: user.clone() });
                Response::Registered
            }
            (
                outcome @ (JobOutcome::Ok | JobOutcome::DeviceAdded),
                Job::Login { user, keys, .. },
            ) => {
                identity_used = outcome == JobOutcome::DeviceAdded;
                self.by_account.succeed(user);
                self.issue(wall, user, keys.signing_public, keys.dh_public, p.renewal)
            }
            (
                JobOutcome::Ok,
                Job::Renew {
                    user,
                    signing_public,
                    dh_public,
                    ..
                },
            ) => self.issue(wall, user, *signing_public, *dh_public, p.renewal),
            (JobOutcome::Ok | JobOutcome::DeviceAdded, job) => {
                if let Some(user) = job.checks_password_of() {
                    self.by_account.succeed(user);
                }
                Response::Done
            }
            (JobOutcome::Revocations { entries, complete }, Job::Revocations { since, .. }) => {
                let mut page = RevocationPage {
                    since: *since,
                    entries,
                    complete,
                    issued_at: wall,
                    signature: [0; 64],
                };
                page.signature = self
                    .cfg
                    .authority
                    .sign(REVOCATION_CONTEXT, &page.signed_bytes());
                Response::Revocations(page)
            }
            (JobOutcome::Devices(devices), Job::Devices { .. }) => Response::Devices(devices),
            (JobOutcome::BuddyList(list), Job::GetBuddyList { .. }) => {
                let list = list.unwrap_or_default();
                Response::BuddyList {
                    version: list.version,
                    backup: list.backup,
                    envelope: list.envelope,
                }
            }
            (JobOutcome::ContactRequests(list), Job::GetContactRequests { .. }) => {
                Response::ContactRequests(list)
            }
            (
                JobOutcome::Revocations { .. }
                | JobOutcome::Devices(_)
                | JobOutcome::BuddyList(_)
                | JobOutcome::ContactRequests(_),
                _,
            ) => Response::Error(LoginError::Server),
        };
        if let Some(ip) = p.identity.filter(|_| !identity_used) {
            self.identities.give_back(ip);
        }
        if !self.conns.contains_key(&stream) {
            return;
        }
        self.respond(stream, &response);
        let next = self.conns.get_mut(&stream).and_then(|c| {
            c.busy = None;
            c.last_activity = now;
            c.queued.pop_front()
        });
        if let Some(r) = next {
            self.on_request(now, stream, r);
        }
    }

    /// Whether a buddy-list update is one a reader could open: the next version, signed
    /// within a day of the server's clock by the asking device (whose certificate names the
    /// account), with that version in its signed header; and a key envelope (needed with the
    /// first backup, optional after) stretched at least as hard as passwords are hashed here.
    /// Nothing is decrypted. Readers check the writer's certificate as of the time the backup
    /// says it was written; this check at the server's own clock, with the revocation check
    /// of the job, is what keeps an expired or revoked device from writing one.
    fn acceptable_backup(
        &self,
        certificate: &natter_core::crypto::Certificate,
        base: u64,
        version: u64,
        backup: &[u8],
        envelope: &[u8],
        wall: UnixTime,
    ) -> bool {
        use natter_core::contacts::{backup as sealed, envelope as wrapped, StretchParams};
        let signed = sealed::verify_writer(backup, &certificate.user, &self.cfg.trusted, wall)
            .ok()
            .filter(|s| s.written_at.0.saturating_add(86_400) >= wall.0);
        let envelope_ok = if envelope.is_empty() {
            base != 0
        } else {
            wrapped::check(envelope, StretchParams::FLOOR).is_ok()
        };
        base.checked_add(1) == Some(version)
            && envelope_ok
            && signed.is_some_and(|s| s.version == version && s.writer == certificate.device)
    }

    /// True when `certificate` verifies at `at` and the asker proved (over this connection's
    /// `challenge` and server key `secret`) that it holds both certified keys.
    fn holds(
        &self,
        certificate: &natter_core::crypto::Certificate,
        at: UnixTime,
        challenge: &[u8; 32],
        secret: &[u8; 32],
        proof: &[u8; 64],
        dh_proof: &[u8; 32],
    ) -> bool {
        let msg = proof_message(
            challenge,
            &certificate.user,
            &certificate.signing_public,
            &certificate.dh_public,
        );
        certificate.verify(&self.cfg.trusted, at).is_ok()
            && verify_signature(&certificate.signing_public, PROOF_CONTEXT, &msg, proof)
            && verify_dh_proof(
                secret,
                &certificate.dh_public,
                DH_PROOF_CONTEXT,
                &msg,
                dh_proof,
            )
    }

    fn issue(
        &mut self,
        wall: UnixTime,
        user: &UserName,
        signing_public: [u8; 32],
        dh_public: [u8; 32],
        renewal: bool,
    ) -> Response {
        let mut not_before = wall
            .0
            .saturating_sub(self.cfg.clock_skew_allowance.as_secs());
        let mut not_after = wall.0 + self.cfg.certificate_lifetime.as_secs();
        // A signing key with a validity window signs only inside it: a certificate reaching
        // past its end would be refused by every node.
        if let Some((from, until)) = self.cfg.trusted.window(self.cfg.authority.key_id()) {
            not_before = not_before.max(from.0);
            not_after = not_after.min(until.0);
            if wall.0 < from.0 || not_after <= not_before {
                tracing::error!(
                    "the authority key is outside its validity window: rotate it (network file)"
                );
                return Response::Error(LoginError::Server);
            }
        }
        let certificate = self.cfg.authority.certify(
            user,
            dh_public,
            signing_public,
            UnixTime(not_before),
            UnixTime(not_after),
        );
        self.stats.certified += 1;
        self.events.push_back(LoginServerEvent::Certified {
            user: user.clone(),
            device: certificate.device,
            renewal,
        });
        Response::Certified { certificate }
    }
}

impl Machine for LoginServer {
    type Event = LoginServerEvent;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Stream {
                stream,
                remote,
                data,
            } => self.on_bytes(now, stream, remote, data),
            Input::StreamClosed { stream } => {
                self.conns.remove(&stream);
                // Jobs in flight finish; their answers are dropped.
            }
            // Bytes follow; the login server speaks only TLS over TCP.
            Input::StreamOpened { .. } | Input::Datagram { .. } | Input::UdpBound { .. } => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let idle: Vec<StreamId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closing
                    && c.busy.is_none()
                    && now.saturating_duration_since(c.last_activity) >= self.cfg.idle_timeout
            })
            .map(|(s, _)| *s)
            .collect();
        for s in idle {
            self.stats.dropped_connections += 1;
            self.close(s);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<LoginServerEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter(|c| !c.closing && c.busy.is_none())
            .map(|c| c.last_activity + self.cfg.idle_timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::crypto::Certificate;
    use natter_core::testkit::{TestNetwork, TEST_WALL};

    const STREAM: StreamId = StreamId(1);
    const GRACE: u64 = 30 * 86_400;

    fn remote() -> SocketAddr {
        "192.0.2.1:50000".parse().unwrap()
    }

    fn send(server: &mut LoginServer, now: Instant, request: &Request) {
        let mut body = BytesMut::new();
        request.encode(&mut body);
        let mut framed = BytesMut::new();
        frame::encode(&body, &mut framed).unwrap();
        server.handle_input(
            now,
            Input::Stream {
                stream: STREAM,
                remote: remote(),
                data: &framed,
            },
        );
    }

    fn responses(server: &mut LoginServer) -> Vec<Response> {
        std::iter::from_fn(|| server.poll_transmit())
            .map(|t| {
                let mut d = FrameDecoder::new(usize::from(u16::MAX));
                d.push(&t.payload);
                Response::decode(&d.next_frame().unwrap().unwrap()).unwrap()
            })
            .collect()
    }

    /// A fresh server whose clock reads `wall`, after a Hello: with its challenge and X25519
    /// key for proofs.
    fn greeted(net: &TestNetwork, wall: UnixTime) -> (LoginServer, Instant, [u8; 32], [u8; 32]) {
        let now = Instant::now();
        let cfg = LoginServerConfig::new(
            Authority::from_secret_bytes(net.authority().secret_bytes()),
            [1; 32],
            wall,
            now,
        );
        let mut server = LoginServer::new(cfg);
        send(
            &mut server,
            now,
            &Request::Hello {
                version: Version::new(0, 1, 0),
                first_start: false,
            },
        );
        let Some(Response::Hello {
            challenge,
            server_key,
            ..
        }) = responses(&mut server).pop()
        else {
            panic!("no hello");
        };
        (server, now, challenge, server_key)
    }

    /// Ask a server whose clock reads `wall` to renew a certificate of `alice` that expired at
    /// `not_after`; return the job it hands out, or its refusal.
    fn renew_at(wall: u64, not_after: u64) -> Result<Job, LoginError> {
        renew_tampered_at(wall, not_after, |_| {})
    }

    /// A device's proofs that it holds `certificate`'s keys, for a connection's `challenge`
    /// and server key (as a renewal or a device list sends them).
    fn proofs(
        device: &natter_core::crypto::DeviceIdentity,
        certificate: &Certificate,
        challenge: &[u8; 32],
        server_key: &[u8; 32],
    ) -> ([u8; 64], [u8; 32]) {
        let msg = proof_message(
            challenge,
            &certificate.user,
            &certificate.signing_public,
            &certificate.dh_public,
        );
        let dh_proof = device.dh_proof(server_key, DH_PROOF_CONTEXT, &msg).unwrap();
        (device.sign(PROOF_CONTEXT, &msg), dh_proof)
    }

    /// [`renew_at`] with the certificate changed by `tamper` after signing.
    fn renew_tampered_at(
        wall: u64,
        not_after: u64,
        tamper: impl FnOnce(&mut Certificate),
    ) -> Result<Job, LoginError> {
        let net = TestNetwork::new(5);
        let id = net.identity("alice");
        let mut certificate = net.authority().certify(
            &id.certificate.user,
            id.device.dh_public(),
            id.device.signing_public(),
            UnixTime(not_after - 86_400),
            UnixTime(not_after),
        );
        tamper(&mut certificate);
        let (mut server, now, challenge, server_key) = greeted(&net, UnixTime(wall));
        let (proof, dh_proof) = proofs(&id.device, &certificate, &challenge, &server_key);
        send(
            &mut server,
            now,
            &Request::Renew {
                certificate,
                proof,
                dh_proof,
            },
        );
        if let Some(item) = server.poll_work() {
            return Ok(item.job);
        }
        match responses(&mut server).pop() {
            Some(Response::Error(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn renewal_is_allowed_until_the_end_of_the_grace_period() {
        let t = TEST_WALL.0;
        // Still valid, just expired, in the grace period, on its last second.
        for wall in [t - 10, t, t + 1, t + GRACE / 2, t + GRACE] {
            assert!(
                matches!(renew_at(wall, t), Ok(Job::Renew { .. })),
                "{} s after expiry",
                wall as i64 - t as i64
            );
        }
        // One second later, and long after: a typed refusal, not a bad proof.
        for wall in [t + GRACE + 1, t + 10 * GRACE] {
            assert_eq!(renew_at(wall, t), Err(LoginError::RenewalExpired));
        }
    }

    #[test]
    fn a_badly_signed_certificate_past_the_grace_is_a_bad_proof() {
        let t = TEST_WALL.0;
        let past = t + GRACE + 1;
        // One bit of the signature flipped: the signature is checked before the age, so the
        // answer does not tell a forger that the grace period is the only obstacle.
        assert_eq!(
            renew_tampered_at(past, t, |c| c.signature[3] ^= 1),
            Err(LoginError::BadProof)
        );
        // Its validity stretched back after signing (still past the grace).
        assert_eq!(
            renew_tampered_at(past, t, |c| c.not_before = UnixTime(c.not_before.0 - 1)),
            Err(LoginError::BadProof)
        );
        // The control: the same certificate untouched is refused for its age.
        assert_eq!(
            renew_tampered_at(past, t, |_| {}),
            Err(LoginError::RenewalExpired)
        );
    }

    /// Log `mallory` in on a fresh server with a device whose Ed25519 key is `device`'s and
    /// whose X25519 key is `dh_public`, proving the latter with `device`'s own X25519 key; return
    /// the job it hands out, or its refusal.
    fn login_claiming(
        device: &natter_core::crypto::DeviceIdentity,
        dh_public: [u8; 32],
    ) -> Result<Job, LoginError> {
        let net = TestNetwork::new(6);
        let (mut server, now, challenge, server_key) = greeted(&net, TEST_WALL);
        let user = UserName::parse("mallory").unwrap();
        let msg = proof_message(&challenge, &user, &device.signing_public(), &dh_public);
        let keys = DeviceKeys {
            signing_public: device.signing_public(),
            dh_public,
            proof: device.sign(PROOF_CONTEXT, &msg),
            dh_proof: device
                .dh_proof(&server_key, DH_PROOF_CONTEXT, &msg)
                .unwrap(),
        };
        send(
            &mut server,
            now,
            &Request::Login {
                user: user.to_string(),
                password: "correct horse battery".into(),
                device: keys,
            },
        );
        if let Some(item) = server.poll_work() {
            return Ok(item.job);
        }
        match responses(&mut server).pop() {
            Some(Response::Error(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_certificate_for_someone_elses_x25519_key_is_refused() {
        let net = TestNetwork::new(7);
        let mallory = net.identity("mallory").device;
        let victim = net.identity("victim").device;
        // Mallory's own keys: certified (the job goes to the password check).
        assert!(matches!(
            login_claiming(&mallory, mallory.dh_public()),
            Ok(Job::Login { .. })
        ));
        // Mallory's Ed25519 key with the victim's X25519 key: Mallory can sign, but cannot
        // compute the Diffie-Hellman of the victim's key with the server's.
        assert_eq!(
            login_claiming(&mallory, victim.dh_public()),
            Err(LoginError::BadProof)
        );
        // A low-order X25519 key (every party "knows" its shared secret) is refused too.
        assert_eq!(login_claiming(&mallory, [0; 32]), Err(LoginError::BadProof));
    }

    fn send_on(
        server: &mut LoginServer,
        now: Instant,
        stream: StreamId,
        remote: SocketAddr,
        request: &Request,
    ) {
        let mut body = BytesMut::new();
        request.encode(&mut body);
        let mut framed = BytesMut::new();
        frame::encode(&body, &mut framed).unwrap();
        server.handle_input(
            now,
            Input::Stream {
                stream,
                remote,
                data: &framed,
            },
        );
    }

    /// A registration on a connection of its own from `remote`: queued as a job, or refused.
    fn register_from(
        server: &mut LoginServer,
        now: Instant,
        n: u64,
        remote: SocketAddr,
    ) -> Result<(), LoginError> {
        let stream = StreamId(1000 + n);
        let hello = Request::Hello {
            version: Version::new(0, 1, 0),
            first_start: false,
        };
        send_on(server, now, stream, remote, &hello);
        let register = Request::Register {
            user: format!("user{n}"),
            password: "correct horse battery".into(),
        };
        send_on(server, now, stream, remote, &register);
        if server.poll_work().is_some() {
            return Ok(());
        }
        match responses(server).pop() {
            Some(Response::Error(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn hashing_work_is_admitted_per_address_and_in_total() {
        let net = TestNetwork::new(8);
        let now = Instant::now();
        let cfg = LoginServerConfig::new(
            Authority::from_secret_bytes(net.authority().secret_bytes()),
            [1; 32],
            TEST_WALL,
            now,
        );
        let mut cfg = cfg;
        // New identities per address have their own test.
        cfg.admission.identity_burst = 1000;
        let (burst, max) = (cfg.admission.burst, cfg.admission.max_in_flight);
        let mut server = LoginServer::new(cfg);
        let a: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        // One address: its burst, then refused with a wait of about a refill.
        for n in 0..u64::from(burst) {
            assert_eq!(register_from(&mut server, now, n, a), Ok(()), "{n}");
        }
        assert_eq!(
            register_from(&mut server, now, 100, a),
            Err(LoginError::Throttled {
                retry_after_secs: 2
            })
        );
        // A second later it has one more.
        let later = now + Duration::from_secs(1);
        assert_eq!(register_from(&mut server, later, 101, a), Ok(()));
        assert_eq!(server.stats().not_admitted, 1);
        // Many addresses: no more than `max_in_flight` hashing jobs wait at once.
        let mut admitted = u64::from(burst) + 1;
        let mut refused = 0;
        for n in 0..(max as u64 + 10) {
            let remote = SocketAddr::from(([198, 51, 100, (n % 250) as u8], 4000 + n as u16));
            match register_from(&mut server, later, 200 + n, remote) {
                Ok(()) => admitted += 1,
                Err(LoginError::Throttled { .. }) => refused += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(admitted, max as u64);
        assert_eq!(refused, 10 + u64::from(burst) + 1);
        // Loopback (the operator's tools) has no bucket, only the total.
        let id = server.pending.keys().next().copied().unwrap();
        server.handle_job(later, id, JobOutcome::Ok);
        let lo: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(register_from(&mut server, later, 999, lo), Ok(()));
    }

    #[test]
    fn new_accounts_and_devices_are_limited_per_address() {
        let net = TestNetwork::new(9);
        let now = Instant::now();
        let cfg = LoginServerConfig::new(
            Authority::from_secret_bytes(net.authority().secret_bytes()),
            [1; 32],
            TEST_WALL,
            now,
        );
        let burst = cfg.admission.identity_burst;
        let mut server = LoginServer::new(cfg);
        let a: SocketAddr = "192.0.2.9:4000".parse().unwrap();
        let mut ids = Vec::new();
        for n in 0..u64::from(burst) {
            assert_eq!(register_from(&mut server, now, n, a), Ok(()), "{n}");
            ids.push(*server.pending.keys().max_by_key(|j| j.0).unwrap());
        }
        // Ten in flight hold the address's ten: the eleventh waits about an hour.
        match register_from(&mut server, now, 100, a) {
            Err(LoginError::Throttled { retry_after_secs }) => {
                assert!(
                    (3000..=3601).contains(&retry_after_secs),
                    "{retry_after_secs}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A registration that failed gives its back; one that succeeded keeps it.
        server.handle_job(now, ids[0], JobOutcome::Failed(LoginError::NameTaken));
        server.handle_job(now, ids[1], JobOutcome::Ok);
        assert_eq!(register_from(&mut server, now, 101, a), Ok(()));
        assert!(register_from(&mut server, now, 102, a).is_err());
        // A login from the spent address may still use a device it has, not add one.
        let dev = net.identity("someone").device;
        let stream = StreamId(5000);
        let hello = Request::Hello {
            version: Version::new(0, 1, 0),
            first_start: false,
        };
        send_on(&mut server, now, stream, a, &hello);
        let (challenge, server_key) = match responses(&mut server).pop() {
            Some(Response::Hello {
                challenge,
                server_key,
                ..
            }) => (challenge, server_key),
            other => panic!("{other:?}"),
        };
        let user = UserName::parse("someone").unwrap();
        let msg = proof_message(&challenge, &user, &dev.signing_public(), &dev.dh_public());
        let keys = DeviceKeys {
            signing_public: dev.signing_public(),
            dh_public: dev.dh_public(),
            proof: dev.sign(PROOF_CONTEXT, &msg),
            dh_proof: dev.dh_proof(&server_key, DH_PROOF_CONTEXT, &msg).unwrap(),
        };
        let login = Request::Login {
            user: user.to_string(),
            password: "correct horse battery".into(),
            device: keys,
        };
        send_on(&mut server, now, stream, a, &login);
        match server.poll_work().map(|w| w.job) {
            Some(Job::Login { new_device, .. }) => {
                assert!(new_device.address_retry_after.is_some_and(|s| s > 3000))
            }
            other => panic!("{other:?}"),
        }
        // Another address is not affected.
        let b: SocketAddr = "192.0.2.10:4000".parse().unwrap();
        assert_eq!(register_from(&mut server, now, 200, b), Ok(()));
    }

    #[test]
    fn certificates_end_with_the_signing_keys_window() {
        let net = TestNetwork::new(10);
        let now = Instant::now();
        let mut cfg = LoginServerConfig::new(
            Authority::from_secret_bytes(net.authority().secret_bytes()),
            [1; 32],
            TEST_WALL,
            now,
        );
        let mut trusted = TrustedAuthorities::default();
        trusted.add_with_window(
            net.authority().public(),
            UnixTime(TEST_WALL.0 - 10),
            UnixTime(TEST_WALL.0 + 3600),
        );
        cfg.trusted = trusted.clone();
        let mut server = LoginServer::new(cfg);
        let user = UserName::parse("alice").unwrap();
        let dev = net.identity("alice").device;
        let issue = |server: &mut LoginServer, wall| {
            server.issue(wall, &user, dev.signing_public(), dev.dh_public(), false)
        };
        // Inside the window: the certificate stops where the key does, and verifies.
        match issue(&mut server, TEST_WALL) {
            Response::Certified { certificate } => {
                assert_eq!(certificate.not_after, UnixTime(TEST_WALL.0 + 3600));
                assert!(certificate.not_before >= UnixTime(TEST_WALL.0 - 10));
                certificate.verify(&trusted, TEST_WALL).unwrap();
            }
            other => panic!("{other:?}"),
        }
        // Past its end, the key signs nothing.
        assert_eq!(
            issue(&mut server, UnixTime(TEST_WALL.0 + 7200)),
            Response::Error(LoginError::Server)
        );
    }

    /// A `Devices` request by alice's device at `wall` with a certificate ending at
    /// `not_after`; `other_challenge`: its proofs made for another connection.
    fn devices_at(wall: u64, not_after: u64, other_challenge: bool) -> Result<Job, LoginError> {
        proved_request(
            wall,
            not_after,
            other_challenge,
            |certificate, proof, dh_proof| Request::Devices {
                proof,
                dh_proof,
                certificate,
            },
        )
    }

    /// The job a request made by alice's device (its proofs for this connection's
    /// challenge, or for another's) becomes, or the error it is refused with.
    fn proved_request(
        wall: u64,
        not_after: u64,
        other_challenge: bool,
        make: impl FnOnce(Certificate, [u8; 64], [u8; 32]) -> Request,
    ) -> Result<Job, LoginError> {
        let net = TestNetwork::new(5);
        let id = net.identity("alice");
        let certificate = net.authority().certify(
            &id.certificate.user,
            id.device.dh_public(),
            id.device.signing_public(),
            UnixTime(not_after - 86_400),
            UnixTime(not_after),
        );
        let (mut server, now, mut challenge, server_key) = greeted(&net, UnixTime(wall));
        if other_challenge {
            challenge[0] ^= 1;
        }
        let (proof, dh_proof) = proofs(&id.device, &certificate, &challenge, &server_key);
        send(&mut server, now, &make(certificate, proof, dh_proof));
        if let Some(item) = server.poll_work() {
            return Ok(item.job);
        }
        match responses(&mut server).pop() {
            Some(Response::Error(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn only_a_proved_device_reads_or_stores_its_accounts_buddy_list() {
        let t = TEST_WALL.0;
        let get = |other: bool| {
            proved_request(t, t + 3600, other, |certificate, proof, dh_proof| {
                Request::GetBuddyList {
                    certificate,
                    proof,
                    dh_proof,
                }
            })
        };
        assert!(matches!(
            get(false),
            Ok(Job::GetBuddyList { ref user, .. }) if user.as_str() == "alice"
        ));
        assert_eq!(get(true), Err(LoginError::BadProof));
        // A backup sealed by alice's device (the one `proved_request` proves), with an
        // envelope stretched as hard as `hard` says.
        let put = |other: bool, base: u64, version: u64, signed: u64, hard: bool| {
            use natter_core::contacts::{backup, envelope, BuddyList, ListKey, StretchParams};
            proved_request(t, t + 3600, other, |certificate, proof, dh_proof| {
                let id = TestNetwork::new(5).identity("alice");
                let list = BuddyList::new(certificate.device);
                let key = ListKey([1; 32]);
                let mut rng = Rng::from_seed(1);
                let sealed = backup::seal(
                    &list,
                    signed,
                    &key,
                    &id.device,
                    &certificate,
                    UnixTime(t),
                    &mut rng,
                )
                .unwrap();
                let stretch = if hard {
                    StretchParams::FLOOR
                } else {
                    StretchParams::MIN
                };
                let wrapped =
                    envelope::wrap(&key, &certificate.user, "pw", stretch, &mut rng).unwrap();
                Request::PutBuddyList {
                    certificate,
                    proof,
                    dh_proof,
                    base,
                    version,
                    backup: sealed,
                    envelope: if base == 0 || hard {
                        wrapped
                    } else {
                        Vec::new()
                    },
                }
            })
        };
        assert!(matches!(
            put(false, 0, 1, 1, true),
            Ok(Job::PutBuddyList { base: 0, ref list, .. }) if list.version == 1
        ));
        assert_eq!(put(true, 0, 1, 1, true), Err(LoginError::BadProof));
        // Only the next version, the one the backup itself is signed with.
        assert_eq!(put(false, 0, 2, 2, true), Err(LoginError::Protocol));
        assert_eq!(put(false, 4, 4, 4, true), Err(LoginError::Protocol));
        assert_eq!(put(false, 1, 2, 3, true), Err(LoginError::Protocol));
        // A first backup needs an envelope, stretched at least as passwords are hashed.
        assert_eq!(put(false, 0, 1, 1, false), Err(LoginError::Protocol));
        assert!(put(false, 1, 2, 2, false).is_ok());
    }

    #[test]
    fn only_a_proved_device_sends_reads_or_deletes_contact_requests() {
        let t = TEST_WALL.0;
        let send = |other: bool, to: &str| {
            let to = to.to_string();
            proved_request(t, t + 3600, other, move |certificate, proof, dh_proof| {
                Request::SendContactRequest {
                    certificate,
                    proof,
                    dh_proof,
                    to,
                    note: "hello".into(),
                    accepting: false,
                }
            })
        };
        assert!(matches!(
            send(false, "Bob"),
            Ok(Job::SendContactRequest { ref user, ref to, .. })
                if user.as_str() == "alice" && to.as_str() == "bob"
        ));
        assert_eq!(send(true, "bob"), Err(LoginError::BadProof));
        assert_eq!(send(false, "no spaces"), Err(LoginError::UnknownUser));
        assert_eq!(
            send(false, "ALICE"),
            Err(LoginError::Protocol),
            "to oneself"
        );
        let get = |other: bool| {
            proved_request(t, t + 3600, other, |certificate, proof, dh_proof| {
                Request::GetContactRequests {
                    certificate,
                    proof,
                    dh_proof,
                }
            })
        };
        assert!(matches!(get(false), Ok(Job::GetContactRequests { .. })));
        assert_eq!(get(true), Err(LoginError::BadProof));
        let delete = |other: bool| {
            proved_request(t, t + 3600, other, |certificate, proof, dh_proof| {
                Request::DeleteContactRequests {
                    certificate,
                    proof,
                    dh_proof,
                    ids: vec![7],
                }
            })
        };
        assert!(matches!(
            delete(false),
            Ok(Job::DeleteContactRequests { ref ids, .. }) if ids == &[7]
        ));
        assert_eq!(delete(true), Err(LoginError::BadProof));
    }

    #[test]
    fn a_buddy_list_update_needs_an_envelope_first_and_its_own_writer() {
        use natter_core::contacts::{backup, envelope, BuddyList, ListKey, StretchParams};
        let t = TEST_WALL.0;
        let net = TestNetwork::new(5);
        // Another device of alice's, certified too.
        let other = net.identity("alice2").device;
        let put = |by_other: bool, with_envelope: bool| {
            proved_request(t, t + 3600, false, |certificate, proof, dh_proof| {
                let mut rng = Rng::from_seed(2);
                let key = ListKey([2; 32]);
                let writer = if by_other {
                    other.clone()
                } else {
                    TestNetwork::new(5).identity("alice").device
                };
                let writer_cert = net.authority().certify(
                    &certificate.user,
                    writer.dh_public(),
                    writer.signing_public(),
                    certificate.not_before,
                    certificate.not_after,
                );
                let list = BuddyList::new(writer_cert.device);
                let sealed =
                    backup::seal(&list, 1, &key, &writer, &writer_cert, UnixTime(t), &mut rng)
                        .unwrap();
                let wrapped = envelope::wrap(
                    &key,
                    &certificate.user,
                    "pw",
                    StretchParams::FLOOR,
                    &mut rng,
                )
                .unwrap();
                Request::PutBuddyList {
                    certificate,
                    proof,
                    dh_proof,
                    base: 0,
                    version: 1,
                    backup: sealed,
                    envelope: if with_envelope { wrapped } else { Vec::new() },
                }
            })
        };
        assert!(put(false, true).is_ok());
        assert_eq!(put(false, false), Err(LoginError::Protocol));
        // Signed by another device than the one asking.
        assert_eq!(put(true, true), Err(LoginError::Protocol));
    }

    #[test]
    fn only_a_device_proving_a_valid_certificate_lists_its_accounts_devices() {
        let t = TEST_WALL.0;
        assert!(matches!(
            devices_at(t, t + 3600, false),
            Ok(Job::Devices { ref user, .. }) if user.as_str() == "alice"
        ));
        // Proofs made for another connection's challenge (a replay), or an expired
        // certificate (it renews first): refused.
        assert_eq!(devices_at(t, t + 3600, true), Err(LoginError::BadProof));
        assert_eq!(devices_at(t, t - 1, false), Err(LoginError::BadProof));
    }
}
