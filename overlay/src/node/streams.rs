//! The node's streams, as the facade keeps them: the far end of every open stream, the
//! accepted streams that no session claimed yet (closed when none does in time), and the
//! sessions peers run over streams they opened to us (a stream is closed when its last session
//! ends, so silent clients do not hold sockets and stream slots).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use natter_core::endpoint::{ConnId, EndpointEvent, Path};
use natter_core::sansio::{Destination, StreamCommand, StreamId};

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct Streams {
    /// The far end of every open stream, as the driver saw it (a client's public, NATed
    /// address on a stream it connected to us: the reflexive address of sessions over it).
    pub remotes: BTreeMap<StreamId, SocketAddr>,
    /// Accepted streams no session has claimed yet, and when they are closed if none does.
    unclaimed: BTreeMap<StreamId, Instant>,
    /// Sessions that others opened over streams they connected to us, and those streams.
    incoming: BTreeMap<ConnId, StreamId>,
}

impl Streams {
    /// A stream is open (`claim_by`: an accepted one must carry a session by then).
    pub fn opened(&mut self, stream: StreamId, remote: SocketAddr, claim_by: Instant) {
        self.remotes.insert(stream, remote);
        if !stream.is_local() {
            self.unclaimed.insert(stream, claim_by);
        }
    }

    /// A stream closed; returns the sessions peers ran over it (they end with it).
    pub fn closed(&mut self, stream: StreamId) -> Vec<ConnId> {
        self.remotes.remove(&stream);
        self.unclaimed.remove(&stream);
        let mut orphans: Vec<ConnId> = self
            .incoming
            .iter()
            .filter(|(_, s)| **s == stream)
            .map(|(c, _)| *c)
            .collect();
        orphans.sort();
        for conn in &orphans {
            self.incoming.remove(conn);
        }
        orphans
    }

    /// We close `stream` ourselves.
    pub fn closing(&mut self, stream: StreamId) {
        self.remotes.remove(&stream);
    }

    /// Follow sessions over accepted streams.
    pub fn observe(&mut self, e: &EndpointEvent, commands: &mut VecDeque<StreamCommand>) {
        match e {
            EndpointEvent::Connected {
                conn,
                remote:
                    Path::Direct {
                        to: Destination::Stream(stream),
                        ..
                    },
                initiator: false,
                ..
            } => {
                self.incoming.insert(*conn, *stream);
                self.unclaimed.remove(stream);
            }
            EndpointEvent::PathChanged { conn, remote } if self.incoming.contains_key(conn) => {
                let old = match remote {
                    Path::Direct {
                        to: Destination::Stream(stream),
                        ..
                    } => self.incoming.insert(*conn, *stream),
                    _ => self.incoming.remove(conn),
                };
                self.close_if_unused(old, commands);
            }
            EndpointEvent::Closed { conn, .. } | EndpointEvent::ConnectFailed { conn, .. } => {
                // A client that left, went silent (idle timeout) or was refused: its stream
                // goes too.
                let old = self.incoming.remove(conn);
                self.close_if_unused(old, commands);
            }
            _ => {}
        }
    }

    fn close_if_unused(&self, stream: Option<StreamId>, commands: &mut VecDeque<StreamCommand>) {
        if let Some(stream) = stream {
            if !self.incoming.values().any(|s| *s == stream) {
                commands.push_back(StreamCommand::Close { stream });
            }
        }
    }

    /// Accepted streams that carried no session in time, in a fixed order.
    pub fn expired(&mut self, now: Instant) -> Vec<StreamId> {
        let mut late: Vec<StreamId> = self
            .unclaimed
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(s, _)| *s)
            .collect();
        late.sort();
        for s in &late {
            self.unclaimed.remove(s);
        }
        late
    }

    /// When the next accepted stream runs out of time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unclaimed.values().min().copied()
    }
}
