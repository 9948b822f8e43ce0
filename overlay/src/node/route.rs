//! The routing table: which part gets each control message and each session event. Adding a
//! part (contacts, chat, files, conferences) adds its rows here and nowhere else.
//!
//! **Session events** (connected, failed, closed, path changed, probes, media) go to the part
//! that owns the session ([`super::parts::Owners`]): the part that opened it, or, for a session
//! a peer opened to us, the part [`claim`] names. Before that, the super-node role's relay sees
//! every session (a relay channel joins the addresses of two sessions, whoever owns them).
//! Events of sessions nobody owns, and those their owner does not consume, go to the
//! application as [`NodeEvent::Session`](super::NodeEvent::Session).
//!
//! **Control messages** go by type, as [`message`] says, whatever session carried them: a
//! part checks that the session is one it expects the message on (a call message on a call
//! session, an attach answer on a link) and counts the rest as dropped.

use natter_core::endpoint::Path;
use natter_core::wire::message::Message;

use super::parts::PartId;

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To this part.
    To(PartId),
    /// To the first part, then the second.
    Both(PartId, PartId),
    /// Nowhere: dropped and counted.
    Drop,
}

/// Which part takes `msg`, arriving on a session owned by `owner`, on a node that is
/// (`super_node`) or is not a super node. Messages for the super-node role reach a node that
/// does not hold it too: it answers what must be answered and drops the rest.
pub(crate) fn message(msg: &Message<'_>, owner: Option<PartId>, super_node: bool) -> Route {
    use PartId::{Calls, Chat, Lookup, SuperNode, Uplink};
    match msg {
        // Calls: signalling and media reports from peer devices, and relays' answers to the
        // requests this node made for its calls.
        Message::CallInvite { .. }
        | Message::CallRinging { .. }
        | Message::CallAnswer { .. }
        | Message::CallDecline { .. }
        | Message::CallBusy { .. }
        | Message::CallCancel { .. }
        | Message::CallHangup { .. }
        | Message::CallHold { .. }
        | Message::CallResume { .. }
        | Message::CallCandidates { .. }
        | Message::CallAnsweredElsewhere { .. }
        | Message::CallKeepAlive { .. }
        | Message::MediaReport { .. }
        | Message::RelayAllocated { .. }
        | Message::RelayRefused { .. }
        | Message::RelayOffer { .. } => Route::To(Calls),
        // Pokes: to a super node, for one of its clients; from our super node, for us.
        Message::ContactPoke { .. } => Route::To(SuperNode),
        Message::ContactPoked { .. } => Route::To(Calls),
        // Chat pieces: a super node forwards them (or hands its own to its chat); a device
        // takes those for it, whichever session brought them.
        Message::ChatChunk { .. } | Message::MailboxDeliver { .. } if super_node => {
            Route::To(SuperNode)
        }
        Message::MailboxPut { .. } | Message::MailboxAck { .. } => Route::To(SuperNode),
        Message::ChatChunk { .. }
        | Message::ChatUnreachable { .. }
        | Message::MailboxDeliver { .. }
        | Message::MailboxStored { .. } => Route::To(Chat),
        // A release names a channel: from a relay we use (to our calls), or from a party of a
        // channel of ours (to our relay).
        Message::RelayRelease { .. } if owner == Some(Calls) => Route::To(Calls),
        Message::RelayRelease { .. } | Message::RelayAllocate { .. } => Route::To(SuperNode),
        // The uplink: answers on our links to super nodes.
        Message::OverlayAttachAck { .. } | Message::OverlayHandover { .. } => Route::To(Uplink),
        Message::OverlayHostCache { entries } if owner == Some(Uplink) && !entries.is_empty() => {
            Route::To(Uplink)
        }
        // A membership hello on a link feeds our host cache, and the role's membership.
        Message::OverlayMembership { .. } if owner == Some(Uplink) => {
            Route::Both(Uplink, SuperNode)
        }
        // Answers to our own searches: the index client's, unless the super-node role runs
        // them (then they are the answers of other super nodes to its index).
        Message::IndexResult { .. } | Message::IndexNotFound { .. } if !super_node => {
            Route::To(Lookup)
        }
        // Watched users' records: pushed to us by our super node, or, when we are one, by
        // the replicas we watch at.
        Message::IndexNotify { .. } if !super_node => Route::To(Lookup),
        // The super-node role: attach requests, host-cache requests, membership, the index,
        // STUN partnering.
        Message::OverlayAttach { .. }
        | Message::OverlayHostCache { .. }
        | Message::OverlayMembership { .. }
        | Message::OverlayStunForward { .. }
        | Message::MemberProbe { .. }
        | Message::MemberProbeAck { .. }
        | Message::MemberUpdate { .. }
        | Message::MemberDigest { .. }
        | Message::MemberPull { .. }
        | Message::MemberCertPull { .. }
        | Message::MemberCerts { .. }
        | Message::IndexStore { .. }
        | Message::IndexSearch { .. }
        | Message::IndexSearchAt { .. }
        | Message::IndexResult { .. }
        | Message::IndexNotFound { .. }
        | Message::IndexWatch { .. }
        | Message::IndexNotify { .. }
        | Message::IndexWill { .. } => Route::To(SuperNode),
        // Handled inside the endpoint, or not implemented by this build.
        _ => Route::Drop,
    }
}

/// Which part owns a session a peer opened to us, by the path it came on: one that reached us
/// through a relay is a call session; one that came straight (a client's link over a stream,
/// another super node over UDP) is the super-node role's.
pub(crate) fn claim(remote: &Path) -> PartId {
    if remote.is_relayed() {
        PartId::Calls
    } else {
        PartId::SuperNode
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::crypto::UserName;
    use natter_core::wire::message::{CallId, HostEntry};
    use PartId::{Calls, Chat, Lookup, SuperNode, Uplink};

    fn host() -> HostEntry {
        HostEntry {
            addr: "198.18.0.1:4000".parse().unwrap(),
            static_key: [1; 32],
        }
    }

    #[test]
    fn every_family_has_its_part() {
        let chunk = Message::ChatChunk {
            to: natter_core::crypto::DeviceId([1; 16]),
            id: natter_core::chat::MessageId([2; 16]),
            index: 0,
            count: 1,
            data: b"sealed",
        };
        assert_eq!(message(&chunk, Some(Uplink), false), Route::To(Chat));
        assert_eq!(
            message(&chunk, Some(SuperNode), true),
            Route::To(SuperNode),
            "a super node forwards pieces (and hands its own to its chat)"
        );
        let call = CallId([1; 16]);
        assert_eq!(
            message(&Message::CallRinging { call }, Some(Calls), false),
            Route::To(Calls)
        );
        assert_eq!(
            message(
                &Message::RelayAllocated {
                    request: 1,
                    channel: 2
                },
                Some(Uplink),
                false
            ),
            Route::To(Calls),
            "a relay answer on a link (UDP blocked here) is still the calls'"
        );
        assert_eq!(
            message(&Message::RelayRelease { channel: 2 }, Some(Calls), true),
            Route::To(Calls)
        );
        assert_eq!(
            message(&Message::RelayRelease { channel: 2 }, Some(SuperNode), true),
            Route::To(SuperNode)
        );
        assert_eq!(
            message(
                &Message::OverlayHostCache { entries: vec![] },
                Some(Uplink),
                true
            ),
            Route::To(SuperNode),
            "an empty host cache is a request"
        );
        assert_eq!(
            message(
                &Message::OverlayHostCache {
                    entries: vec![host()]
                },
                Some(Uplink),
                false
            ),
            Route::To(Uplink)
        );
        assert_eq!(
            message(
                &Message::OverlayMembership {
                    entries: vec![host()]
                },
                Some(Uplink),
                true
            ),
            Route::Both(Uplink, SuperNode)
        );
        let result = Message::IndexNotFound {
            query: 1,
            hops: 0,
            definite: true,
        };
        assert_eq!(message(&result, Some(Uplink), false), Route::To(Lookup));
        assert_eq!(
            message(&result, Some(SuperNode), true),
            Route::To(SuperNode)
        );
        let search = Message::IndexSearch {
            query: 1,
            full: true,
            user: UserName::parse("alice").unwrap(),
        };
        assert_eq!(message(&search, None, false), Route::To(SuperNode));
        assert_eq!(message(&Message::KeepAlive, None, false), Route::Drop);
    }

    #[test]
    fn sessions_peers_open_are_claimed_by_their_path() {
        use natter_core::sansio::{Destination, StreamId};
        let relayed = Path::Relayed {
            relay: Destination::Stream(StreamId(3)),
            channel: 9,
        };
        assert_eq!(claim(&relayed), Calls);
        let direct = Path::stream(StreamId(3));
        assert_eq!(claim(&direct), SuperNode);
    }
}
