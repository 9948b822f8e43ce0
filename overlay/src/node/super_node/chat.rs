//! The super node's share of chat: forwarding sealed pieces ([`Message::ChatChunk`]) to the
//! device they name. The super node sees the receiving device, the message id and the size,
//! never the content (the pieces are an end-to-end sealed envelope).
//!
//! A piece goes to the device `to` when `to` is one of our clients, or a device that sent us
//! chat on a session of its own (its answers and receipts come back that way), or to our own
//! chat when `to` is this device. Otherwise the sender hears [`Message::ChatUnreachable`] and
//! looks the device up again. Each sending device (by its static key, however many sessions it
//! opens) may have at most [`CHUNKS_PER_MINUTE`] pieces forwarded a minute: about 3 MB, some
//! forty of the longest messages; past it pieces are dropped with a counter.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_core::crypto::DeviceId;
use natter_core::endpoint::ConnId;
use natter_core::wire::message::Message;

use super::super::parts::{Cx, Notice, PartId};
use crate::supernode::SuperNodeRole;

/// Pieces one device may have forwarded in a minute.
pub(crate) const CHUNKS_PER_MINUTE: u32 = 3000;
/// Sending devices remembered (the session to answer them on, and their rate).
const SENDERS_HELD: usize = 16_384;
/// A sender's session is remembered this long after its last piece.
const SENDER_KEPT: Duration = Duration::from_secs(600);

/// A device that sent us chat.
#[derive(Debug, Clone, Copy)]
struct Sender {
    conn: ConnId,
    last: Instant,
    minute: Instant,
    count: u32,
}

/// See the [module documentation](self).
#[derive(Debug, Default)]
pub(crate) struct ChatForwarding {
    senders: BTreeMap<DeviceId, Sender>,
    /// Pieces forwarded.
    pub forwarded: u64,
}

impl ChatForwarding {
    /// A piece that came on session `conn` (`None`: from our own chat).
    pub fn chunk(
        &mut self,
        cx: &mut Cx<'_>,
        role: &SuperNodeRole,
        conn: Option<ConnId>,
        msg: &Message<'_>,
    ) {
        let Message::ChatChunk { to, id, .. } = msg else {
            return;
        };
        if let Some(conn) = conn {
            if !self.admit(cx, conn) {
                cx.out.stats.overlay_dropped += 1;
                return;
            }
        }
        let me = cx.cfg.identity.device.device_id();
        if *to == me {
            if let Some(conn) = conn {
                let mut buf = BytesMut::with_capacity(1100);
                msg.encode(&mut buf);
                cx.out.notify(
                    PartId::Chat,
                    Notice::ChatIn {
                        conn: Some(conn),
                        message: buf.to_vec(),
                    },
                );
            }
            return;
        }
        let target = role
            .client_of(*to)
            .or_else(|| self.senders.get(to).map(|s| s.conn));
        let sent = match target {
            Some(target) if Some(target) != conn => {
                let ok = cx.sessions.send(cx.now, target, msg).is_ok();
                if !ok {
                    // A session that ended (the device left): forget it.
                    self.senders.remove(to);
                }
                ok
            }
            _ => false,
        };
        match sent {
            true => self.forwarded += 1,
            false => {
                if let Some(conn) = conn {
                    let _ = cx.sessions.send(
                        cx.now,
                        conn,
                        &Message::ChatUnreachable { to: *to, id: *id },
                    );
                }
                cx.out.stats.overlay_dropped += 1;
            }
        }
    }

    /// Remember the device behind `conn` and count its piece; false past its rate.
    fn admit(&mut self, cx: &mut Cx<'_>, conn: ConnId) -> bool {
        let Some(device) = cx.sessions.view().peer(conn).map(|p| p.certificate.device) else {
            return false;
        };
        let now = cx.now;
        if !self.senders.contains_key(&device) && self.senders.len() >= SENDERS_HELD {
            self.senders.retain(|_, s| now < s.last + SENDER_KEPT);
            if self.senders.len() >= SENDERS_HELD {
                return false;
            }
        }
        let s = self.senders.entry(device).or_insert(Sender {
            conn,
            last: now,
            minute: now,
            count: 0,
        });
        s.conn = conn;
        s.last = now;
        if now >= s.minute + Duration::from_secs(60) {
            s.minute = now;
            s.count = 0;
        }
        if s.count >= CHUNKS_PER_MINUTE {
            return false;
        }
        s.count += 1;
        true
    }
}
