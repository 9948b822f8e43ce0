//! The overlay client: what an ordinary node needs to join the network and be found.
//!
//! * [`Attacher`]: finding super nodes (host cache, UDP probes, then TCP and the fallback
//!   ports) and keeping links to two of them ([`HostCache`], persisted between runs).
//! * [`NatProbe`]: classifying the NAT in front of the node (RFC 5780) against a super node.
//! * [`PresenceRecord`]: the signed record a device publishes in the global index, and
//!   [`ClientSearches`]: searching the index through a super node, every record verified.
//!
//! The server side of each lives in `natter-overlay` (the super-node role).

mod attach;
mod hostcache;
mod lookup;
mod nat;
mod presence;

pub use attach::{AttachAction, AttachConfig, AttachEvent, Attacher, FallbackPorts, LinkTransport};
pub use hostcache::{CacheEntry, HostCache};
pub use lookup::{merge_record, ClientSearches, SearchOutcome, SearchResult};
pub use nat::{Filtering, NatEvent, NatProbe, NatProbeConfig, NatProbeError, NatReport, NatType};
pub use presence::{
    PresenceError, PresenceRecord, DEFAULT_RETENTION, MAX_ADDRESSES, MAX_SKEW_SECS,
};
