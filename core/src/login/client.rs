//! The client side of the login protocol: one machine per connection to the login server.
//!
//! The machine sends [`Request::Hello`] at once, then runs the queued [`Operation`]s one at a
//! time. A certificate it receives is checked before it is reported: signed by a trusted
//! authority, valid now, for the requested user, and binding this device's own keys. The
//! runtime (TLS, sockets) lives in `natter-transport`; renewal timing is [`renew_at`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::proto::{
    proof_message, DeviceKeys, DeviceSummary, LoginError, Request, Response, RevocationPage,
    Version, VersionStatus, DH_PROOF_CONTEXT, PROOF_CONTEXT, REVOCATION_CONTEXT,
};
use crate::crypto::{
    verify_signature, AuthorityKeyId, CertError, Certificate, DeviceId, DeviceIdentity,
    TrustedAuthorities, UnixTime, UserName,
};
use crate::sansio::{Destination, Input, Machine, StreamId, Transmit};
use crate::wire::frame::{self, FrameDecoder};

/// When to renew a certificate: after 80 % of its lifetime.
pub fn renew_at(certificate: &Certificate) -> UnixTime {
    let life = certificate
        .not_after
        .0
        .saturating_sub(certificate.not_before.0);
    UnixTime(certificate.not_before.0 + life.saturating_mul(4) / 5)
}

/// Something to do at the login server.
#[derive(Clone, PartialEq, Eq)]
pub enum Operation {
    /// Create an account.
    Register {
        /// Name.
        user: String,
        /// Password.
        password: String,
    },
    /// Log in and get this device certified.
    Login {
        /// Name.
        user: String,
        /// Password.
        password: String,
    },
    /// Renew this device's certificate without the password.
    Renew {
        /// The current certificate.
        certificate: Certificate,
    },
    /// Change the password.
    ChangePassword {
        /// Name.
        user: String,
        /// Current password.
        old: String,
        /// New password.
        new: String,
        /// Also revoke every other device of the account (this one stays certified).
        revoke_others: bool,
    },
    /// Revoke a device of the account.
    RevokeDevice {
        /// Name.
        user: String,
        /// Password.
        password: String,
        /// Device.
        device: DeviceId,
    },
    /// Delete the account.
    DeleteAccount {
        /// Name.
        user: String,
        /// Password.
        password: String,
    },
    /// Fetch one page of revocations after `since`.
    FetchRevocations {
        /// Last serial known.
        since: u64,
    },
    /// List the account's devices, proving this device holds `certificate` (no password).
    ListDevices {
        /// This device's current certificate.
        certificate: Certificate,
    },
    /// Leave a contact request for `to` (proved as for [`Operation::ListDevices`]).
    SendContactRequest {
        /// This device's certificate.
        certificate: Certificate,
        /// The user asked.
        to: UserName,
        /// The note (at most `proto::MAX_REQUEST_NOTE` bytes).
        note: String,
        /// It answers their request (an acceptance).
        accepting: bool,
    },
    /// Fetch the contact requests waiting for the account.
    FetchContactRequests {
        /// This device's certificate.
        certificate: Certificate,
    },
    /// Delete answered contact requests.
    DeleteContactRequests {
        /// This device's certificate.
        certificate: Certificate,
        /// Their ids.
        ids: Vec<u64>,
    },
    /// Fetch the account's buddy-list backup and its key's envelope (proved as for
    /// [`Operation::ListDevices`]).
    FetchBuddyList {
        /// This device's current certificate.
        certificate: Certificate,
    },
    /// Store a buddy-list backup in place of version `base` (proved as for
    /// [`Operation::ListDevices`]); a conflict fails with
    /// [`LoginError::VersionConflict`].
    StoreBuddyList {
        /// This device's current certificate.
        certificate: Certificate,
        /// The version replaced (0: none stored).
        base: u64,
        /// The new version.
        version: u64,
        /// The sealed backup (`crate::contacts::backup::seal`).
        backup: Vec<u8>,
        /// The list key's envelope (`crate::contacts::envelope::wrap`); empty keeps the
        /// stored one.
        envelope: Vec<u8>,
    },
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operation::Register { user, .. } => write!(f, "Register({user:?})"),
            Operation::Login { user, .. } => write!(f, "Login({user:?})"),
            Operation::Renew { certificate } => write!(f, "Renew({})", certificate.user),
            Operation::ChangePassword { user, .. } => write!(f, "ChangePassword({user:?})"),
            Operation::RevokeDevice { user, device, .. } => {
                write!(f, "RevokeDevice({user:?}, {device:?})")
            }
            Operation::DeleteAccount { user, .. } => write!(f, "DeleteAccount({user:?})"),
            Operation::FetchRevocations { since } => write!(f, "FetchRevocations({since})"),
            Operation::ListDevices { certificate } => {
                write!(f, "ListDevices({})", certificate.user)
            }
            Operation::SendContactRequest {
                certificate, to, ..
            } => write!(f, "SendContactRequest({} -> {to})", certificate.user),
            Operation::FetchContactRequests { certificate } => {
                write!(f, "FetchContactRequests({})", certificate.user)
            }
            Operation::DeleteContactRequests { certificate, ids } => {
                write!(
                    f,
                    "DeleteContactRequests({}, {} ids)",
                    certificate.user,
                    ids.len()
                )
            }
            Operation::FetchBuddyList { certificate } => {
                write!(f, "FetchBuddyList({})", certificate.user)
            }
            Operation::StoreBuddyList {
                certificate,
                base,
                version,
                ..
            } => write!(
                f,
                "StoreBuddyList({}, {base} -> {version})",
                certificate.user
            ),
        }
    }
}

/// Why an operation failed, as the application sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginClientError {
    /// The server refused it.
    #[error("{0}")]
    Refused(#[from] LoginError),
    /// The server's minimum version is above ours.
    #[error("upgrade required: the server needs version {minimum} or newer")]
    UpgradeRequired {
        /// The minimum.
        minimum: Version,
    },
    /// The certificate the server sent is not acceptable.
    #[error("the server sent an unacceptable certificate: {0}")]
    BadCertificate(CertError),
    /// The revocation page's signature did not verify.
    #[error("the revocation list signature is invalid")]
    BadRevocationList,
    /// The server broke the protocol.
    #[error("protocol error from the login server")]
    Protocol,
    /// No answer in time.
    #[error("the login server did not answer in time")]
    Timeout,
    /// The connection closed before the answer.
    #[error("the connection to the login server closed")]
    Closed,
}

/// What the client machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginClientEvent {
    /// The server judged our version.
    VersionChecked(VersionStatus),
    /// Account created.
    Registered,
    /// A verified certificate for this device.
    Certified(Box<Certificate>),
    /// A password change, revocation or deletion succeeded.
    Done,
    /// A verified page of revocations.
    Revocations(RevocationPage),
    /// The account's devices.
    Devices(Vec<DeviceSummary>),
    /// The account's buddy-list backup, as stored (version 0 and empty: none). Nothing in it
    /// is checked yet: `crate::contacts::backup::open` does that.
    BuddyList {
        /// The version.
        version: u64,
        /// The sealed backup.
        backup: Vec<u8>,
        /// The list key's envelope.
        envelope: Vec<u8>,
    },
    /// The contact requests waiting for the account, oldest first.
    ContactRequests(Vec<crate::login::proto::ContactRequest>),
    /// A buddy-list backup was stored.
    BuddyListStored {
        /// Its version.
        version: u64,
    },
    /// An operation failed.
    Failed {
        /// Which.
        operation: Operation,
        /// Why.
        error: LoginClientError,
    },
}

/// Configuration of a [`LoginClient`].
#[derive(Debug, Clone)]
pub struct LoginClientConfig {
    /// Our version.
    pub version: Version,
    /// First start after installation.
    pub first_start: bool,
    /// This device's keys.
    pub device: DeviceIdentity,
    /// Authority keys from the network file.
    pub trusted: TrustedAuthorities,
    /// Wall-clock time at `clock_anchor`.
    pub wall_anchor: UnixTime,
    /// The instant matching `wall_anchor`.
    pub clock_anchor: Instant,
    /// How long to wait for each answer.
    pub timeout: Duration,
}

/// What the server's Hello gave this connection for proofs of possession.
#[derive(Debug, Clone, Copy)]
struct Hello {
    challenge: [u8; 32],
    server_key: [u8; 32],
}

/// A login connection's machine. See the [module documentation](self).
pub struct LoginClient {
    cfg: LoginClientConfig,
    stream: StreamId,
    decoder: FrameDecoder,
    hello: Option<Hello>,
    upgrade_required: Option<Version>,
    ops: VecDeque<Operation>,
    current: Option<(Operation, Instant)>,
    hello_sent: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LoginClientEvent>,
    dead: bool,
}

impl std::fmt::Debug for LoginClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginClient")
            .field("stream", &self.stream)
            .field("queued", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl LoginClient {
    /// A client on an open connection `stream`; queues the Hello at once.
    pub fn new(cfg: LoginClientConfig, stream: StreamId, now: Instant) -> Self {
        let mut c = Self {
            cfg,
            stream,
            decoder: FrameDecoder::new(usize::from(u16::MAX)),
            hello: None,
            upgrade_required: None,
            ops: VecDeque::new(),
            current: None,
            hello_sent: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            dead: false,
        };
        let hello = Request::Hello {
            version: c.cfg.version,
            first_start: c.cfg.first_start,
        };
        c.send(&hello);
        c
    }

    /// Queue an operation; they run in order once the version is checked.
    pub fn enqueue(&mut self, now: Instant, op: Operation) {
        self.ops.push_back(op);
        self.next(now);
    }

    /// True when nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.ops.is_empty() && self.current.is_none()
    }

    fn wall(&self, now: Instant) -> UnixTime {
        UnixTime(
            self.cfg.wall_anchor.0
                + now
                    .saturating_duration_since(self.cfg.clock_anchor)
                    .as_secs(),
        )
    }

    fn send(&mut self, request: &Request) {
        let mut body = BytesMut::new();
        request.encode(&mut body);
        let mut framed = BytesMut::new();
        if frame::encode(&body, &mut framed).is_ok() {
            self.transmits.push_back(Transmit {
                destination: Destination::Stream(self.stream),
                source: None,
                payload: framed.freeze(),
                ttl: None,
            });
        }
    }

    fn keys(&self, hello: &Hello, user: &UserName) -> DeviceKeys {
        let d = &self.cfg.device;
        let msg = proof_message(&hello.challenge, user, &d.signing_public(), &d.dh_public());
        DeviceKeys {
            signing_public: d.signing_public(),
            dh_public: d.dh_public(),
            proof: d.sign(PROOF_CONTEXT, &msg),
            // A low-order server key gets a proof the server cannot check: it answers BadProof.
            dh_proof: d
                .dh_proof(&hello.server_key, DH_PROOF_CONTEXT, &msg)
                .unwrap_or([0; 32]),
        }
    }

    fn next(&mut self, now: Instant) {
        if self.current.is_some() || self.dead {
            return;
        }
        let Some(hello) = self.hello else {
            return;
        };
        while let Some(op) = self.ops.pop_front() {
            if let Some(minimum) = self.upgrade_required {
                self.events.push_back(LoginClientEvent::Failed {
                    operation: op,
                    error: LoginClientError::UpgradeRequired { minimum },
                });
                continue;
            }
            let request = match &op {
                Operation::Register { user, password } => Request::Register {
                    user: user.clone(),
                    password: password.clone(),
                },
                Operation::Login { user, password } => {
                    // An invalid name is sent as is: the server's answer is authoritative.
                    let device = match UserName::parse(user) {
                        Ok(name) => self.keys(&hello, &name),
                        Err(_) => DeviceKeys {
                            signing_public: self.cfg.device.signing_public(),
                            dh_public: self.cfg.device.dh_public(),
                            proof: [0; 64],
                            dh_proof: [0; 32],
                        },
                    };
                    Request::Login {
                        user: user.clone(),
                        password: password.clone(),
                        device,
                    }
                }
                Operation::Renew { certificate } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::Renew {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                    }
                }
                Operation::ChangePassword {
                    user,
                    old,
                    new,
                    revoke_others,
                } => Request::ChangePassword {
                    user: user.clone(),
                    old: old.clone(),
                    new: new.clone(),
                    keep_only: revoke_others.then(|| self.cfg.device.device_id()),
                },
                Operation::RevokeDevice {
                    user,
                    password,
                    device,
                } => Request::RevokeDevice {
                    user: user.clone(),
                    password: password.clone(),
                    device: *device,
                },
                Operation::DeleteAccount { user, password } => Request::DeleteAccount {
                    user: user.clone(),
                    password: password.clone(),
                },
                Operation::FetchRevocations { since } => Request::Revocations { since: *since },
                Operation::ListDevices { certificate } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::Devices {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                    }
                }
                Operation::SendContactRequest {
                    certificate,
                    to,
                    note,
                    accepting,
                } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::SendContactRequest {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                        to: to.to_string(),
                        note: note.clone(),
                        accepting: *accepting,
                    }
                }
                Operation::FetchContactRequests { certificate } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::GetContactRequests {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                    }
                }
                Operation::DeleteContactRequests { certificate, ids } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::DeleteContactRequests {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                        ids: ids.clone(),
                    }
                }
                Operation::FetchBuddyList { certificate } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::GetBuddyList {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                    }
                }
                Operation::StoreBuddyList {
                    certificate,
                    base,
                    version,
                    backup,
                    envelope,
                } => {
                    let keys = self.keys(&hello, &certificate.user);
                    Request::PutBuddyList {
                        certificate: certificate.clone(),
                        proof: keys.proof,
                        dh_proof: keys.dh_proof,
                        base: *base,
                        version: *version,
                        backup: backup.clone(),
                        envelope: envelope.clone(),
                    }
                }
            };
            self.send(&request);
            self.current = Some((op, now));
            return;
        }
    }

    fn finish(&mut self, now: Instant, response: Response) {
        let Some((op, _)) = self.current.take() else {
            self.protocol_error();
            return;
        };
        let event = match (response, &op) {
            (Response::Error(e), _) => LoginClientEvent::Failed {
                operation: op.clone(),
                error: LoginClientError::Refused(e),
            },
            (Response::Registered, Operation::Register { .. }) => LoginClientEvent::Registered,
            (Response::Certified { certificate }, Operation::Login { user, .. }) => {
                let expected = UserName::parse(user).ok();
                self.check_certificate(now, &op, certificate, expected.as_ref())
            }
            (Response::Certified { certificate }, Operation::Renew { certificate: old }) => {
                let user = old.user.clone();
                self.check_certificate(now, &op, certificate, Some(&user))
            }
            (
                Response::Done,
                Operation::ChangePassword { .. }
                | Operation::RevokeDevice { .. }
                | Operation::DeleteAccount { .. },
            ) => LoginClientEvent::Done,
            (Response::Devices(devices), Operation::ListDevices { .. }) => {
                LoginClientEvent::Devices(devices)
            }
            (
                Response::BuddyList {
                    version,
                    backup,
                    envelope,
                },
                Operation::FetchBuddyList { .. },
            ) => LoginClientEvent::BuddyList {
                version,
                backup,
                envelope,
            },
            (
                Response::Done,
                Operation::SendContactRequest { .. } | Operation::DeleteContactRequests { .. },
            ) => LoginClientEvent::Done,
            (Response::ContactRequests(requests), Operation::FetchContactRequests { .. }) => {
                LoginClientEvent::ContactRequests(requests)
            }
            (Response::Done, Operation::StoreBuddyList { version, .. }) => {
                LoginClientEvent::BuddyListStored { version: *version }
            }
            (Response::Revocations(page), Operation::FetchRevocations { since })
                if page.since == *since =>
            {
                if self.page_signed(&page) {
                    LoginClientEvent::Revocations(page)
                } else {
                    LoginClientEvent::Failed {
                        operation: op.clone(),
                        error: LoginClientError::BadRevocationList,
                    }
                }
            }
            _ => LoginClientEvent::Failed {
                operation: op.clone(),
                error: LoginClientError::Protocol,
            },
        };
        self.events.push_back(event);
        self.next(now);
    }

    fn page_signed(&self, page: &RevocationPage) -> bool {
        // Any trusted authority may have signed the page, a key with a validity window only
        // a page dated inside it.
        let trusted = &self.cfg.trusted;
        trusted
            .keys()
            .filter(|k| {
                trusted
                    .window(AuthorityKeyId::of(k))
                    .is_none_or(|(from, until)| from <= page.issued_at && page.issued_at <= until)
            })
            .any(|k| verify_signature(k, REVOCATION_CONTEXT, &page.signed_bytes(), &page.signature))
    }

    fn check_certificate(
        &self,
        now: Instant,
        op: &Operation,
        certificate: Certificate,
        user: Option<&UserName>,
    ) -> LoginClientEvent {
        let d = &self.cfg.device;
        let result = certificate
            .verify_for_key(&self.cfg.trusted, self.wall(now), &d.dh_public())
            .and_then(|()| {
                if certificate.signing_public != d.signing_public()
                    || user.is_some_and(|u| *u != certificate.user)
                {
                    Err(CertError::WrongKey)
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => LoginClientEvent::Certified(Box::new(certificate)),
            Err(e) => LoginClientEvent::Failed {
                operation: op.clone(),
                error: LoginClientError::BadCertificate(e),
            },
        }
    }

    fn protocol_error(&mut self) {
        self.fail_all(LoginClientError::Protocol);
    }

    fn fail_all(&mut self, error: LoginClientError) {
        self.dead = true;
        let ops: Vec<Operation> = self
            .current
            .take()
            .map(|(op, _)| op)
            .into_iter()
            .chain(self.ops.drain(..))
            .collect();
        for operation in ops {
            self.events.push_back(LoginClientEvent::Failed {
                operation,
                error: error.clone(),
            });
        }
    }

    fn on_bytes(&mut self, now: Instant, data: &[u8]) {
        self.decoder.push(data);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(_) => return self.protocol_error(),
            };
            let Ok(response) = Response::decode(&frame) else {
                return self.protocol_error();
            };
            match response {
                Response::Hello {
                    status,
                    challenge,
                    server_key,
                } if self.hello.is_none() => {
                    self.hello = Some(Hello {
                        challenge,
                        server_key,
                    });
                    if let VersionStatus::UpgradeRequired { minimum } = status {
                        self.upgrade_required = Some(minimum);
                    }
                    self.events
                        .push_back(LoginClientEvent::VersionChecked(status));
                    self.next(now);
                }
                Response::Hello { .. } => return self.protocol_error(),
                other => self.finish(now, other),
            }
        }
    }
}

impl Machine for LoginClient {
    type Event = LoginClientEvent;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if self.dead {
            return;
        }
        match input {
            Input::Stream { stream, data, .. } if stream == self.stream => self.on_bytes(now, data),
            Input::StreamClosed { stream } if stream == self.stream => {
                self.fail_all(LoginClientError::Closed)
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let started = match (&self.current, self.hello) {
            (Some((_, at)), _) => Some(*at),
            (None, None) => Some(self.hello_sent),
            (None, Some(_)) => None,
        };
        if started.is_some_and(|at| now.saturating_duration_since(at) >= self.cfg.timeout) {
            self.fail_all(LoginClientError::Timeout);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<LoginClientEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        match (&self.current, self.hello) {
            (Some((_, at)), _) => Some(*at + self.cfg.timeout),
            (None, None) => Some(self.hello_sent + self.cfg.timeout),
            (None, Some(_)) => None,
        }
    }
}

/// Keeps a certificate fresh: a tiny sans-IO timer machine that says when to renew (at 80 % of
/// the certificate's lifetime) and, after a failed attempt, when to retry (back-off from
/// 30 s doubling to 10 minutes, never later than expiry while the certificate is valid).
#[derive(Debug, Clone)]
pub struct RenewalTimer {
    certificate: Certificate,
    wall_anchor: UnixTime,
    clock_anchor: Instant,
    failures: u32,
    retry_at: Option<Instant>,
}

impl RenewalTimer {
    /// Track `certificate`; wall-clock time at `clock_anchor` is `wall_anchor`.
    pub fn new(certificate: Certificate, wall_anchor: UnixTime, clock_anchor: Instant) -> Self {
        Self {
            certificate,
            wall_anchor,
            clock_anchor,
            failures: 0,
            retry_at: None,
        }
    }

    /// The certificate being kept.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    fn instant_of(&self, wall: UnixTime) -> Instant {
        let secs = wall.0.saturating_sub(self.wall_anchor.0);
        self.clock_anchor + Duration::from_secs(secs)
    }

    /// When to start the next renewal.
    pub fn poll_timeout(&self) -> Instant {
        self.retry_at
            .unwrap_or_else(|| self.instant_of(renew_at(&self.certificate)))
    }

    /// True when a renewal should start at `now`.
    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.poll_timeout()
    }

    /// A renewal succeeded: track the new certificate.
    pub fn renewed(&mut self, certificate: Certificate) {
        self.certificate = certificate;
        self.failures = 0;
        self.retry_at = None;
    }

    /// A renewal failed at `now`: retry later.
    pub fn failed(&mut self, now: Instant) {
        self.failures += 1;
        let delay = Duration::from_secs(30)
            .saturating_mul(1 << (self.failures - 1).min(5))
            .min(Duration::from_secs(600));
        let expiry = self.instant_of(self.certificate.not_after);
        // Try once more just before expiry; once expired, keep backing off (the server still
        // renews during its grace period).
        self.retry_at = Some(if now < expiry {
            (now + delay).min(expiry)
        } else {
            now + delay
        });
    }

    /// True when the certificate has expired at `now`: peers refuse it until it is renewed.
    /// It can still be renewed without the password during the login server's renewal grace
    /// period (keep retrying on the timer's back-off); only once the server answers
    /// [`LoginError::RenewalExpired`] must the node log in again with the password.
    pub fn expired(&self, now: Instant) -> bool {
        now > self.instant_of(self.certificate.not_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Authority;
    use crate::login::proto::RevokedDevice;
    use crate::rng::Rng;
    use crate::testkit::{TestNetwork, TEST_WALL};

    const STREAM: StreamId = StreamId(7);

    fn remote() -> std::net::SocketAddr {
        "127.0.0.1:4433".parse().unwrap()
    }

    /// A client for `device` trusting `net`, already past the Hello exchange.
    fn client(net: &TestNetwork, device: DeviceIdentity, now: Instant) -> LoginClient {
        let cfg = LoginClientConfig {
            version: Version::new(0, 1, 0),
            first_start: false,
            device,
            trusted: net.trusted(),
            wall_anchor: TEST_WALL,
            clock_anchor: now,
            timeout: Duration::from_secs(10),
        };
        let mut c = LoginClient::new(cfg, STREAM, now);
        deliver(
            &mut c,
            now,
            &Response::Hello {
                status: VersionStatus::Ok,
                challenge: [9; 32],
                server_key: [10; 32],
            },
        );
        assert_eq!(
            c.poll_event(),
            Some(LoginClientEvent::VersionChecked(VersionStatus::Ok))
        );
        c
    }

    /// Hand `response` to the client as the server would send it: one frame on the stream.
    fn deliver(c: &mut LoginClient, now: Instant, response: &Response) {
        let mut body = BytesMut::new();
        response.encode(&mut body);
        let mut framed = BytesMut::new();
        frame::encode(&body, &mut framed).unwrap();
        c.handle_input(
            now,
            Input::Stream {
                stream: STREAM,
                remote: remote(),
                data: &framed,
            },
        );
    }

    /// Run one operation against a canned answer and return what the client reports.
    fn answer(
        net: &TestNetwork,
        device: &DeviceIdentity,
        op: Operation,
        response: Response,
    ) -> LoginClientEvent {
        let now = Instant::now();
        let mut c = client(net, device.clone(), now);
        c.enqueue(now, op);
        deliver(&mut c, now, &response);
        let event = c.poll_event().expect("an event");
        assert!(c.is_idle());
        event
    }

    fn login_op() -> Operation {
        Operation::Login {
            user: "alice".into(),
            password: "correct horse battery".into(),
        }
    }

    fn bad_certificate(event: LoginClientEvent) -> Option<CertError> {
        match event {
            LoginClientEvent::Failed {
                error: LoginClientError::BadCertificate(e),
                ..
            } => Some(e),
            _ => None,
        }
    }

    #[test]
    fn a_tampered_server_certificate_is_rejected() {
        let net = TestNetwork::new(3);
        let id = net.identity("alice");
        let genuine = id.certificate.clone();
        // The genuine certificate is accepted (the control).
        assert_eq!(
            answer(
                &net,
                &id.device,
                login_op(),
                Response::Certified {
                    certificate: genuine.clone()
                }
            ),
            LoginClientEvent::Certified(Box::new(genuine.clone()))
        );
        // Its validity stretched after signing.
        let mut longer = genuine.clone();
        longer.not_after = UnixTime(longer.not_after.0 + 365 * 86_400);
        // Another user's name put in.
        let mut renamed = genuine.clone();
        renamed.user = UserName::parse("mallory").unwrap();
        // One bit of the signature flipped.
        let mut flipped = genuine.clone();
        flipped.signature[10] ^= 1;
        for tampered in [longer, renamed, flipped] {
            assert_eq!(
                bad_certificate(answer(
                    &net,
                    &id.device,
                    login_op(),
                    Response::Certified {
                        certificate: tampered
                    }
                )),
                Some(CertError::BadSignature)
            );
        }
        // Signed by an authority the network file does not list.
        let rogue = Authority::generate(&mut Rng::from_seed(99));
        let forged = rogue.certify(
            &genuine.user,
            genuine.dh_public,
            genuine.signing_public,
            genuine.not_before,
            genuine.not_after,
        );
        assert_eq!(
            bad_certificate(answer(
                &net,
                &id.device,
                login_op(),
                Response::Certified {
                    certificate: forged
                }
            )),
            Some(CertError::UnknownAuthority)
        );
        // Validly signed, but for another device's keys.
        let other = net.identity("bobby");
        let theirs = net.authority().certify(
            &genuine.user,
            other.device.dh_public(),
            other.device.signing_public(),
            genuine.not_before,
            genuine.not_after,
        );
        assert_eq!(
            bad_certificate(answer(
                &net,
                &id.device,
                login_op(),
                Response::Certified {
                    certificate: theirs
                }
            )),
            Some(CertError::WrongKey)
        );
        // Validly signed for this device's keys, but naming another user: refused for a login
        // as alice and for a renewal of alice's certificate alike.
        let not_ours = net.authority().certify(
            &UserName::parse("mallory").unwrap(),
            genuine.dh_public,
            genuine.signing_public,
            genuine.not_before,
            genuine.not_after,
        );
        for op in [
            login_op(),
            Operation::Renew {
                certificate: genuine.clone(),
            },
        ] {
            assert_eq!(
                bad_certificate(answer(
                    &net,
                    &id.device,
                    op,
                    Response::Certified {
                        certificate: not_ours.clone()
                    }
                )),
                Some(CertError::WrongKey)
            );
        }
        // A renewal answered with a tampered certificate is refused the same way.
        let mut renewed = genuine.clone();
        renewed.not_before = UnixTime(renewed.not_before.0 - 1);
        assert_eq!(
            bad_certificate(answer(
                &net,
                &id.device,
                Operation::Renew {
                    certificate: genuine
                },
                Response::Certified {
                    certificate: renewed
                }
            )),
            Some(CertError::BadSignature)
        );
    }

    #[test]
    fn a_revocation_page_dated_outside_its_keys_window_is_rejected() {
        let net = TestNetwork::new(4);
        let id = net.identity("alice");
        let mut c = client(&net, id.device.clone(), Instant::now());
        let mut trusted = TrustedAuthorities::default();
        trusted.add_with_window(
            net.authority().public(),
            UnixTime(TEST_WALL.0 - 100),
            UnixTime(TEST_WALL.0 + 100),
        );
        c.cfg.trusted = trusted;
        let signed = |issued_at: UnixTime| {
            let mut page = RevocationPage {
                since: 0,
                entries: vec![],
                complete: true,
                issued_at,
                signature: [0; 64],
            };
            page.signature = net
                .authority()
                .sign(REVOCATION_CONTEXT, &page.signed_bytes());
            page
        };
        assert!(c.page_signed(&signed(TEST_WALL)));
        // A retired key (or a stolen one) signs nothing dated after its window.
        assert!(!c.page_signed(&signed(UnixTime(TEST_WALL.0 + 1000))));
        assert!(!c.page_signed(&signed(UnixTime(TEST_WALL.0 - 1000))));
    }

    #[test]
    fn a_tampered_revocation_page_is_rejected() {
        let net = TestNetwork::new(4);
        let id = net.identity("alice");
        let mut page = RevocationPage {
            since: 0,
            entries: (1..=3u8)
                .map(|i| RevokedDevice {
                    serial: u64::from(i),
                    device: DeviceId([i; 16]),
                    revoked_at: UnixTime(TEST_WALL.0 - u64::from(i)),
                })
                .collect(),
            complete: true,
            issued_at: TEST_WALL,
            signature: [0; 64],
        };
        page.signature = net
            .authority()
            .sign(REVOCATION_CONTEXT, &page.signed_bytes());
        let fetch = || Operation::FetchRevocations { since: 0 };
        let rejected = |event: LoginClientEvent| {
            matches!(
                event,
                LoginClientEvent::Failed {
                    error: LoginClientError::BadRevocationList,
                    ..
                }
            )
        };
        // The genuine page is accepted (the control).
        assert_eq!(
            answer(
                &net,
                &id.device,
                fetch(),
                Response::Revocations(page.clone())
            ),
            LoginClientEvent::Revocations(page.clone())
        );
        // An entry dropped (hiding a revoked device from super nodes).
        let mut dropped = page.clone();
        dropped.entries.remove(1);
        // A device id swapped.
        let mut swapped = page.clone();
        swapped.entries[0].device = DeviceId([0xee; 16]);
        // "complete" turned off, or the signing time moved.
        let mut incomplete = page.clone();
        incomplete.complete = false;
        let mut older = page.clone();
        older.issued_at = UnixTime(page.issued_at.0 - 3600);
        // The signature itself damaged.
        let mut flipped = page.clone();
        flipped.signature[0] ^= 0x80;
        // Re-signed by a key the network file does not list.
        let mut rogue = swapped.clone();
        rogue.signature = Authority::generate(&mut Rng::from_seed(98))
            .sign(REVOCATION_CONTEXT, &rogue.signed_bytes());
        for (what, tampered) in [
            ("dropped", dropped),
            ("swapped", swapped),
            ("incomplete", incomplete),
            ("older", older),
            ("flipped", flipped),
            ("rogue", rogue),
        ] {
            let event = answer(&net, &id.device, fetch(), Response::Revocations(tampered));
            assert!(rejected(event.clone()), "{what}: {event:?}");
        }
    }

    #[test]
    fn renewal_is_scheduled_at_four_fifths_and_retried_with_backoff() {
        let net = TestNetwork::new(1);
        let id = net.identity("alice");
        let dev = id.device.clone();
        let cert = net.authority().certify(
            &id.certificate.user,
            dev.dh_public(),
            dev.signing_public(),
            TEST_WALL,
            UnixTime(TEST_WALL.0 + 1000),
        );
        let t0 = Instant::now();
        let mut timer = RenewalTimer::new(cert.clone(), TEST_WALL, t0);
        assert_eq!(timer.poll_timeout(), t0 + Duration::from_secs(800));
        assert!(!timer.is_due(t0 + Duration::from_secs(799)));
        assert!(timer.is_due(t0 + Duration::from_secs(800)));
        let t1 = t0 + Duration::from_secs(800);
        timer.failed(t1);
        assert_eq!(timer.poll_timeout(), t1 + Duration::from_secs(30));
        timer.failed(t1);
        assert_eq!(timer.poll_timeout(), t1 + Duration::from_secs(60));
        // Retries never go past expiry.
        for _ in 0..10 {
            timer.failed(t1);
        }
        assert!(timer.poll_timeout() <= t0 + Duration::from_secs(1000));
        assert!(timer.expired(t0 + Duration::from_secs(1001)));
        // Once expired, failures still back off instead of retrying at once.
        let t2 = t0 + Duration::from_secs(1001);
        timer.failed(t2);
        assert_eq!(timer.poll_timeout(), t2 + Duration::from_secs(600));
        let newer = net.authority().certify(
            &cert.user,
            dev.dh_public(),
            dev.signing_public(),
            UnixTime(TEST_WALL.0 + 800),
            UnixTime(TEST_WALL.0 + 1800),
        );
        timer.renewed(newer);
        assert_eq!(timer.poll_timeout(), t0 + Duration::from_secs(1600));
    }
}
