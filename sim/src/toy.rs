//! A tiny [`Machine`] for tests and examples: it pings, echoes, reflects addresses (like a
//! STUN server) and records everything it receives. Behind the `toy` feature: the
//! simulator's own tests and doctests enable it, applications never need it.
//!
//! Wire format (all UDP):
//!
//! * `PING` + seq (u64, big endian): answered with `PONG` + the same seq when echoing is on;
//! * `PONG` + seq;
//! * `WHO?`: answered with `YOU=` + the sender's address as the receiver saw it (text) when
//!   reflecting is on;
//! * anything else is reported as [`ToyEvent::Datagram`].
//!
//! On streams it records every chunk as [`ToyEvent::StreamData`] and does not interpret it.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use natter_core::sansio::{Destination, Input, Machine, StreamCommand, StreamId, Transmit};

const PING: &[u8; 4] = b"PING";
const PONG: &[u8; 4] = b"PONG";
const WHO: &[u8; 4] = b"WHO?";
const YOU: &[u8; 4] = b"YOU=";

/// What a [`ToyMachine`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToyEvent {
    /// A ping arrived.
    Ping {
        /// Who sent it, as seen locally.
        from: SocketAddr,
        /// The local address it arrived on.
        local: SocketAddr,
        /// Its sequence number.
        seq: u64,
    },
    /// A pong arrived.
    Pong {
        /// Who sent it, as seen locally.
        from: SocketAddr,
        /// Its sequence number.
        seq: u64,
    },
    /// A reflector told us which address it saw us at.
    Observed {
        /// The reflector.
        from: SocketAddr,
        /// Our address as the reflector saw it.
        observed: SocketAddr,
    },
    /// Some other datagram arrived.
    Datagram {
        /// Who sent it, as seen locally.
        from: SocketAddr,
        /// The local address it arrived on.
        local: SocketAddr,
        /// Its contents.
        data: Bytes,
    },
    /// A stream we had not heard of showed up (an inbound connection).
    StreamOpened {
        /// The stream.
        stream: StreamId,
        /// The far end.
        remote: SocketAddr,
    },
    /// Bytes arrived on a stream (never empty).
    StreamData {
        /// The stream.
        stream: StreamId,
        /// The far end.
        remote: SocketAddr,
        /// The bytes.
        data: Bytes,
    },
    /// A stream was closed.
    StreamClosed {
        /// The stream.
        stream: StreamId,
    },
    /// A socket asked for with [`ToyMachine::bind_udp`] is open (or could not be: `None`).
    UdpBound {
        /// The request's token.
        token: u64,
        /// The new socket's address.
        local: Option<SocketAddr>,
    },
}

/// A ping/echo/reflector machine. See the [module documentation](self).
#[derive(Debug)]
pub struct ToyMachine {
    local: SocketAddr,
    echo: bool,
    reflect: bool,
    peer: Option<SocketAddr>,
    interval: Duration,
    remaining: u64,
    next_seq: u64,
    next_ping: Option<Instant>,
    streams: BTreeSet<StreamId>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<ToyEvent>,
    commands: VecDeque<StreamCommand>,
}

impl ToyMachine {
    /// A machine sending from `local`, echoing pings and reflecting addresses.
    pub fn new(local: SocketAddr) -> Self {
        ToyMachine {
            local,
            echo: true,
            reflect: true,
            peer: None,
            interval: Duration::from_millis(20),
            remaining: 0,
            next_seq: 0,
            next_ping: None,
            streams: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            commands: VecDeque::new(),
        }
    }

    /// Asks the driver for one more UDP socket next to the default one; the answer arrives as
    /// [`ToyEvent::UdpBound`].
    pub fn bind_udp(&mut self, token: u64) {
        self.commands.push_back(StreamCommand::BindUdp {
            token,
            near: self.local,
        });
    }

    /// Closes a socket opened with [`ToyMachine::bind_udp`].
    pub fn close_udp(&mut self, local: SocketAddr) {
        self.commands.push_back(StreamCommand::CloseUdp { local });
    }

    /// Turns echoing of pings on or off.
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Turns address reflection on or off.
    pub fn with_reflect(mut self, reflect: bool) -> Self {
        self.reflect = reflect;
        self
    }

    /// The address datagrams are sent from by default.
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Sends `count` pings to `peer`, one every `interval`, the first one now.
    pub fn start_pinging(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        interval: Duration,
        count: u64,
    ) {
        self.peer = Some(peer);
        self.interval = interval;
        self.remaining = count;
        self.next_ping = (count > 0).then_some(now);
        self.handle_timeout(now);
    }

    /// Stops pinging.
    pub fn stop_pinging(&mut self) {
        self.remaining = 0;
        self.next_ping = None;
    }

    /// How many pings were sent so far (the next sequence number).
    pub fn pings_sent(&self) -> u64 {
        self.next_seq
    }

    /// Sends one datagram from the default local address.
    pub fn send_to(&mut self, now: Instant, to: SocketAddr, data: impl Into<Bytes>) {
        let local = self.local;
        self.send_from(now, local, to, data);
    }

    /// Sends one datagram from `local` (which must be bound on the host).
    pub fn send_from(
        &mut self,
        _now: Instant,
        local: SocketAddr,
        to: SocketAddr,
        data: impl Into<Bytes>,
    ) {
        self.reply(local, to, data.into());
    }

    /// Sends one ping (with the next sequence number) to `to`.
    pub fn send_ping(&mut self, now: Instant, to: SocketAddr) {
        let local = self.local;
        self.send_ping_from(now, local, to);
    }

    /// Sends one ping (with the next sequence number) from `local` to `to`.
    pub fn send_ping_from(&mut self, _now: Instant, local: SocketAddr, to: SocketAddr) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.reply(local, to, tagged(PING, seq));
    }

    /// Sends one ping (with the next sequence number) to `to` with IP TTL `ttl`: a low TTL
    /// opens the NATs on the way without reaching `to` (hole punching).
    pub fn send_ping_with_ttl(&mut self, _now: Instant, to: SocketAddr, ttl: u8) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.transmits.push_back(Transmit {
            destination: Destination::Udp(to),
            source: Some(self.local),
            payload: tagged(PING, seq),
            ttl: Some(ttl),
        });
    }

    /// Asks `reflector` which address it sees us at; the answer arrives as
    /// [`ToyEvent::Observed`].
    pub fn ask_reflection(&mut self, now: Instant, reflector: SocketAddr) {
        self.send_to(now, reflector, Bytes::from_static(WHO));
    }

    /// Remembers `stream` (one the application opened with
    /// [`Sim::connect_stream`](crate::Sim::connect_stream)) so that data arriving on it is
    /// not reported as a new inbound stream. Writing to a stream does this too.
    pub fn adopt_stream(&mut self, stream: StreamId) {
        self.streams.insert(stream);
    }

    /// Writes `data` to `stream` (which the application opened or the machine accepted).
    pub fn send_stream(&mut self, _now: Instant, stream: StreamId, data: impl Into<Bytes>) {
        self.streams.insert(stream);
        self.transmits.push_back(Transmit {
            destination: Destination::Stream(stream),
            source: None,
            payload: data.into(),
            ttl: None,
        });
    }

    fn reply(&mut self, local: SocketAddr, to: SocketAddr, payload: Bytes) {
        self.transmits.push_back(Transmit {
            destination: Destination::Udp(to),
            source: Some(local),
            payload,
            ttl: None,
        });
    }
}

fn tagged(tag: &[u8; 4], seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(12);
    b.put_slice(tag);
    b.put_u64(seq);
    b.freeze()
}

fn seq_of(data: &[u8]) -> Option<u64> {
    data.get(4..12)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_be_bytes)
}

impl Machine for ToyMachine {
    type Event = ToyEvent;

    fn handle_input(&mut self, _now: Instant, input: Input<'_>) {
        match input {
            Input::Datagram {
                source,
                local,
                data,
            } => {
                let tag = data.get(..4);
                match (tag, seq_of(data)) {
                    (Some(t), Some(seq)) if t == PING => {
                        self.events.push_back(ToyEvent::Ping {
                            from: source,
                            local,
                            seq,
                        });
                        if self.echo {
                            self.reply(local, source, tagged(PONG, seq));
                        }
                    }
                    (Some(t), Some(seq)) if t == PONG => {
                        self.events.push_back(ToyEvent::Pong { from: source, seq });
                    }
                    _ if data == WHO && self.reflect => {
                        let mut b = BytesMut::from(&YOU[..]);
                        b.put_slice(source.to_string().as_bytes());
                        self.reply(local, source, b.freeze());
                    }
                    _ => {
                        let observed = data
                            .strip_prefix(YOU)
                            .and_then(|rest| std::str::from_utf8(rest).ok())
                            .and_then(|s| s.parse().ok());
                        let event = match observed {
                            Some(observed) => ToyEvent::Observed {
                                from: source,
                                observed,
                            },
                            None => ToyEvent::Datagram {
                                from: source,
                                local,
                                data: Bytes::copy_from_slice(data),
                            },
                        };
                        self.events.push_back(event);
                    }
                }
            }
            Input::Stream {
                stream,
                remote,
                data,
            } => {
                if self.streams.insert(stream) {
                    self.events
                        .push_back(ToyEvent::StreamOpened { stream, remote });
                }
                if !data.is_empty() {
                    self.events.push_back(ToyEvent::StreamData {
                        stream,
                        remote,
                        data: Bytes::copy_from_slice(data),
                    });
                }
            }
            Input::StreamOpened { stream, remote } => {
                if self.streams.insert(stream) {
                    self.events
                        .push_back(ToyEvent::StreamOpened { stream, remote });
                }
            }
            Input::StreamClosed { stream } => {
                self.streams.remove(&stream);
                self.events.push_back(ToyEvent::StreamClosed { stream });
            }
            Input::UdpBound { token, local } => {
                self.events.push_back(ToyEvent::UdpBound { token, local })
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(peer) = self.peer else {
            return;
        };
        while let Some(at) = self.next_ping {
            if at > now || self.remaining == 0 {
                break;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.remaining -= 1;
            let local = self.local;
            self.reply(local, peer, tagged(PING, seq));
            self.next_ping = (self.remaining > 0).then(|| at + self.interval);
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<ToyEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next_ping
    }

    fn poll_stream_command(&mut self) -> Option<StreamCommand> {
        self.commands.pop_front()
    }
}
