//! The event thread of a started client (`natter-node`): it turns the node's events into
//! [`Event`]s, runs the calls' audio, and keeps the node going: certificate renewals,
//! revocations, load reports, the host's addresses, the host cache on disk.
//!
//! **Locks.** The runtime thread never waits for the client's locks except the dial
//! bindings, held only for a map operation: a closure run on the runtime thread binds a dial
//! to its call there, before the dial's outcome can be reported. So this thread may hold the
//! call table's lock while it waits for the runtime (ending a call joins its media thread,
//! which may be waiting for the runtime to send a frame) without a cycle. Commands found
//! while handling an event run after the call table is released ([`FollowUp`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use natter_core::endpoint::Path;
use natter_core::overlay::{AttachEvent, SearchResult};
use natter_core::sansio::Destination;
use natter_overlay::node::{ChatEvent, Load, Node, NodeEvent};
use natter_transport::login::client::{LoggedIn, Renewer, RevocationFetcher};
use natter_transport::netwatch::NetWatch;
use natter_transport::persist::save_host_cache;
use natter_transport::runtime::{Runtime, RuntimeHandle};

use crate::call::FollowUp;
use crate::chat::MessageStatus;
use crate::client::{lock, Shared};
use crate::events::Event;
use crate::presence::Availability;
use crate::types::{DeviceRecord, Found, NodeRole, PathInfo, PathReason, SearchId, SearchOutcome};

/// How often the host cache is saved while running.
const SAVE_EVERY: Duration = Duration::from_secs(60);
/// How often the revocation list is fetched.
const REVOCATIONS_EVERY: Duration = Duration::from_secs(300);

pub(crate) struct Worker {
    rt: Runtime<Node>,
    handle: RuntimeHandle<Node>,
    shared: Arc<Shared>,
    renewer: Renewer,
    revocations: RevocationFetcher,
    _watch: NetWatch,
    _audio_watch: Option<crate::audio::DeviceWatch>,
    cache_path: Option<PathBuf>,
    stop: Arc<AtomicBool>,
    renewing: bool,
    last_save: Instant,
    /// A chat event moved the end-to-end channels since they were last saved.
    chat_dirty: bool,
    /// The generation of the mailboxes last saved.
    mailbox_generation: Option<u64>,
}

impl Worker {
    pub fn new(
        rt: Runtime<Node>,
        shared: Arc<Shared>,
        li: &LoggedIn,
        cache_path: Option<PathBuf>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let udp = rt.udp_addrs().first().copied();
        let watch_handle = rt.handle();
        let watch = NetWatch::spawn(
            udp.unwrap_or_else(|| shared.settings.listen),
            move |addrs| {
                watch_handle.command(move |n, now| n.set_local_addresses(now, addrs));
            },
        );
        let network = shared.network.file.clone();
        Self {
            renewer: Renewer::spawn(
                network.clone(),
                shared.store.clone(),
                li.certificate.clone(),
            ),
            revocations: RevocationFetcher::spawn(network, li.device.clone(), REVOCATIONS_EVERY),
            _watch: watch,
            _audio_watch: if shared.settings.audio.watch_devices {
                crate::audio::DeviceWatch::spawn(shared.events.clone())
                    .map_err(|e| tracing::warn!(error = %e, "watching audio devices"))
                    .ok()
            } else {
                None
            },
            handle: rt.handle(),
            rt,
            shared,
            cache_path,
            stop,
            renewing: true,
            last_save: Instant::now(),
            chat_dirty: false,
            mailbox_generation: None,
        }
    }

    pub fn run(mut self) {
        let mut last_housekeeping = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                self.housekeeping();
                last_housekeeping = Instant::now();
            }
            match self.rt.events().recv_timeout(Duration::from_millis(50)) {
                Ok(e) => self.on_event(e),
                Err(RecvTimeoutError::Timeout) => {}
                // The runtime thread died (an I/O error): nothing more will come.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shutdown();
    }

    /// End the calls, say goodbye to the network, save the host cache.
    fn shutdown(mut self) {
        let (events, hang_up) = lock(&self.shared.calls).end_all();
        for id in hang_up {
            self.handle.command(move |n, now| {
                let _ = n.hang_up(now, id);
            });
        }
        self.handle.command(|n, now| n.go_offline(now));
        self.save_cache();
        self.save_chat();
        self.save_mailboxes(true);
        for e in events {
            self.shared.events.push(e);
        }
        // Dropping the runtime stops its thread (the offline record and hang-ups were flushed
        // when their commands ran); the renewer, revocation fetcher and address watcher join
        // their threads as they drop.
    }

    fn save_cache(&self) {
        let Some(path) = &self.cache_path else {
            return;
        };
        if let Some(cache) = self.handle.command(|n, _| n.host_cache().clone()) {
            if let Err(e) = save_host_cache(path, &cache) {
                tracing::warn!(path = %path.display(), error = %e, "saving the host cache");
            }
        }
    }

    fn housekeeping(&mut self) {
        while let Ok(devices) = self.revocations.revoked().try_recv() {
            let count = devices.len();
            self.handle.command(move |n, now| n.revoke(now, devices));
            self.shared.events.push(Event::DevicesRevoked { count });
        }
        while self.renewing {
            match self.renewer.certificates().try_recv() {
                Ok(cert) => {
                    if let Some(li) = lock(&self.shared.login).as_mut() {
                        li.certificate = cert.clone();
                    }
                    self.handle
                        .command(move |n, now| n.update_certificate(now, cert));
                    self.shared.events.push(Event::CertificateRenewed);
                }
                Err(TryRecvError::Empty) => break,
                // The renewer gave up (its reason is logged): the password is needed.
                Err(TryRecvError::Disconnected) => {
                    self.renewing = false;
                    self.shared.events.push(Event::LoginRequired);
                }
            }
        }
        let (cpu, bytes_per_sec) = self.rt.load();
        *lock(&self.shared.load) = (cpu, bytes_per_sec);
        self.handle
            .command(move |n, now| n.report_load(now, Load { cpu, bytes_per_sec }));
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save_cache();
            self.last_save = Instant::now();
        }
        if self.chat_dirty {
            self.save_chat();
        }
        self.save_mailboxes(false);
    }

    /// Keep a super node's mailboxes in the data directory (`mailboxes.bin`) when they changed
    /// (or always, with `force`): messages kept for offline devices survive a restart.
    fn save_mailboxes(&mut self, force: bool) {
        let Some(dir) = self.shared.settings.data_dir.clone() else {
            return;
        };
        let generation = self.handle.command(|n, _| n.mailbox_generation()).flatten();
        if generation.is_none() || (!force && generation == self.mailbox_generation) {
            return;
        }
        if let Some((generation, saved)) = self
            .handle
            .command(|n, now| n.save_mailboxes(now))
            .flatten()
        {
            let path = dir.join("mailboxes.bin");
            match natter_transport::login::files::write_private(&path, &saved) {
                Ok(()) => self.mailbox_generation = Some(generation),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "saving the mailboxes")
                }
            }
        }
    }

    /// Keep the end-to-end channels (sealed under the history's key) in the history's file.
    fn save_chat(&mut self) {
        self.chat_dirty = false;
        let chat = &self.shared.chat;
        if let Some(key) = chat.state_key() {
            if let Some(saved) = self.handle.command(move |n, _| n.save_chat(&key)) {
                chat.save_channels(&saved);
            }
        }
    }

    fn attached(&self) -> usize {
        self.handle.command(|n, _| n.attached().len()).unwrap_or(0)
    }

    /// A chat event: into the history, out as the client's events. A message the history
    /// keeps is acknowledged to the node (only then does its sender get a receipt); the
    /// end-to-end channels are saved at the next housekeeping (each message moved a ratchet).
    fn on_chat(&mut self, ev: ChatEvent, events: &mut Vec<Event>) {
        self.chat_dirty = true;
        let chat = &self.shared.chat;
        let me = lock(&self.shared.login)
            .as_ref()
            .map(|l| l.certificate.user.clone());
        let mut advance = |id, status, by: Option<&natter_core::crypto::UserName>| {
            if let Some(with) = chat.advance(id, status, by) {
                events.push(Event::MessageStatus { id, with, status });
            }
        };
        match ev {
            ChatEvent::Received(opened) => match chat.received(&opened) {
                Ok(new) => {
                    if let Some(message) = new {
                        events.push(Event::MessageReceived {
                            message: Box::new(message),
                        });
                    }
                    let id = opened.item.id;
                    self.handle
                        .command(move |n, now| n.chat_stored(now, vec![id]));
                }
                // Not acknowledged: its sender sends it again, and it is reported again.
                Err(e) => tracing::warn!(%e, "a message could not be stored"),
            },
            ChatEvent::Sent { id } => advance(id, MessageStatus::Sent, None),
            // Our own other devices' receipts say nothing about the recipient.
            ChatEvent::Delivered { id, user, .. } if Some(&user) != me.as_ref() => {
                advance(id, MessageStatus::Delivered, Some(&user))
            }
            ChatEvent::Read { ids, user } if Some(&user) != me.as_ref() => {
                for id in ids {
                    advance(id, MessageStatus::Read, Some(&user));
                }
            }
            ChatEvent::Failed { id, error } => {
                tracing::warn!(%error, "message not sent");
                advance(id, MessageStatus::Failed, None)
            }
            _ => {}
        }
    }

    fn on_event(&mut self, e: NodeEvent) {
        let mut events = Vec::new();
        let mut follow = Vec::new();
        match e {
            NodeEvent::Attach(a) => events.push(match a {
                AttachEvent::Connecting { candidates } => Event::Connecting { candidates },
                AttachEvent::UdpBlocked => Event::UdpBlocked,
                AttachEvent::Attached {
                    super_node,
                    transport,
                    reflexive,
                    rtt,
                } => Event::Attached {
                    super_node,
                    transport,
                    seen_as: reflexive,
                    rtt,
                    attached: self.attached(),
                },
                AttachEvent::Detached { super_node } => Event::Detached {
                    super_node,
                    attached: self.attached(),
                },
                AttachEvent::NoSuperNode => Event::NoSuperNode {
                    attached: self.attached(),
                },
            }),
            NodeEvent::Nat(r) => events.push(Event::NatDetected {
                nat: r.nat,
                mapped: r.mapped,
                took: r.elapsed,
            }),
            NodeEvent::Promoted => events.push(Event::RoleChanged {
                role: NodeRole::SuperNode,
            }),
            NodeEvent::Demoted => events.push(Event::RoleChanged {
                role: NodeRole::Client,
            }),
            NodeEvent::SuperNode(ev) => tracing::info!(?ev, "super node"),
            NodeEvent::Session(ev) => tracing::debug!(?ev, "session"),
            NodeEvent::Presence { user, online } => {
                let availability = if online {
                    Availability::Online
                } else {
                    Availability::Offline
                };
                if self.shared.contacts.presence_changed(&user, availability) {
                    events.push(Event::ContactPresence { user, availability });
                }
            }
            NodeEvent::Poked { from } => self.shared.contacts.poked(&from),
            NodeEvent::Chat(ev) => self.on_chat(ev, &mut events),
            NodeEvent::Search { id, outcome } => events.push(Event::SearchResult {
                search: SearchId(id),
                user: outcome.user.clone(),
                outcome: Box::new(search_outcome(&outcome)),
            }),
            NodeEvent::Dial { dial, outcome } => {
                let id = {
                    let mut dials = lock(&self.shared.dials);
                    let i = dials.iter().position(|(d, _)| *d == dial);
                    i.map(|i| dials.swap_remove(i).1)
                };
                lock(&self.shared.calls).on_dial(id, outcome, &mut events, &mut follow)
            }
            NodeEvent::Call(ev) => lock(&self.shared.calls).on_call_event(
                ev,
                &self.shared,
                &self.handle,
                &self.shared.settings.audio,
                &mut events,
            ),
            NodeEvent::CallPath {
                call,
                path,
                kind,
                reason,
            } => {
                if let Some(id) = lock(&self.shared.calls).on_path(call, kind) {
                    events.push(Event::CallPath {
                        call: id,
                        path: Box::new(PathInfo {
                            kind,
                            reason: path_reason(reason),
                            route: route(&path),
                            remote: match &path {
                                Path::Direct {
                                    to: Destination::Udp(a),
                                    ..
                                }
                                | Path::Relayed {
                                    relay: Destination::Udp(a),
                                    ..
                                } => Some(*a),
                                _ => None,
                            },
                        }),
                    });
                }
            }
            NodeEvent::CallQuality { call, quality } => {
                events.extend(lock(&self.shared.calls).on_quality(call, quality))
            }
            NodeEvent::CallMedia { call, data } => {
                lock(&self.shared.calls).on_media(call, &data, &mut events)
            }
        }
        for f in follow {
            match f {
                FollowUp::HangUp(id) => {
                    self.handle.command(move |n, now| {
                        let _ = n.hang_up(now, id);
                    });
                }
            }
        }
        for e in events {
            self.shared.events.push(e);
        }
    }
}

fn path_reason(r: natter_core::call::SwitchReason) -> PathReason {
    use natter_core::call::SwitchReason as S;
    match r {
        S::Better => PathReason::Better,
        S::Dead => PathReason::Dead,
        S::Loss => PathReason::Loss,
        S::Rtt => PathReason::Rtt,
        S::Peer => PathReason::Peer,
    }
}

fn destination(d: &Destination) -> String {
    match d {
        Destination::Udp(a) => format!("UDP {a}"),
        Destination::Stream(s) => format!("TCP stream {}", s.0),
    }
}

/// A path in words.
fn route(p: &Path) -> String {
    match p {
        Path::Direct { to, .. } => format!("direct, {}", destination(to)),
        Path::Relayed { relay, channel } => {
            format!(
                "relayed on channel {channel} by the super node at {}",
                destination(relay)
            )
        }
    }
}

fn search_outcome(o: &natter_core::overlay::SearchOutcome) -> SearchOutcome {
    let found = match &o.result {
        SearchResult::Found(records) => Found::Devices(
            records
                .iter()
                .map(|r| DeviceRecord {
                    device: r.device(),
                    online: r.online,
                    last_seen: SystemTime::UNIX_EPOCH + Duration::from_secs(r.timestamp.0),
                    super_nodes: r.super_nodes.clone(),
                })
                .collect(),
        ),
        SearchResult::NotFound => Found::NotFound,
        SearchResult::Unavailable => Found::Unavailable,
    };
    SearchOutcome {
        found,
        hops: o.hops,
        took: o.elapsed,
    }
}
