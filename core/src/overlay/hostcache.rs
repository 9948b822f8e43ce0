//! The host cache: the super nodes a node knows, with their history.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use crate::crypto::UnixTime;
use crate::wire::message::{put_addr, read_addr, HostEntry};
use crate::wire::{DecodeError, Reader};

/// One known super node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheEntry {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its Noise static key, when known (bootstrap entries may lack it).
    pub static_key: Option<[u8; 32]>,
    /// Last time it was seen working (0 = never).
    pub last_seen: UnixTime,
    /// Successful connections.
    pub successes: u32,
    /// Failed connection attempts since the last success.
    pub failures: u32,
}

impl CacheEntry {
    /// Higher is better: recent successes count, consecutive failures count against.
    fn score(&self, now: UnixTime) -> i64 {
        let age_hours = now.0.saturating_sub(self.last_seen.0) / 3600;
        let recency = if self.last_seen.0 == 0 {
            0
        } else {
            48i64.saturating_sub(age_hours as i64).max(0)
        };
        i64::from(self.successes.min(100)) + recency - 20 * i64::from(self.failures)
    }
}

/// The host cache.
///
/// The host cache: the super nodes a node knows, with their history.
///
/// Up to [`HostCache::CAPACITY`] (200, as the original network kept) entries, each with its
/// address, Noise static key, when it was last seen working and how often connecting to it
/// succeeded or failed. It is seeded from the network file's bootstrap list, refreshed from
/// super nodes (attach answers, host cache exchanges), pruned of entries that keep failing or
/// have not been seen for a week, and saved in the node's data directory ([`HostCache::encode`]
/// and [`HostCache::decode`]; the runtime does the file I/O).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostCache {
    entries: Vec<CacheEntry>,
}

const FORMAT_VERSION: u8 = 1;
/// Entries not seen for this long are pruned.
const MAX_AGE_SECS: u64 = 7 * 24 * 3600;
/// Entries failing this many times in a row are pruned (bootstrap entries are re-added).
const MAX_FAILURES: u32 = 8;

impl HostCache {
    /// Most entries kept.
    pub const CAPACITY: usize = 200;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries.
    pub fn entries(&self) -> &[CacheEntry] {
        &self.entries
    }

    /// Add a super node (or learn its key), keeping the history of a known one. When full, the
    /// lowest-scoring entry makes room.
    pub fn insert(&mut self, addr: SocketAddr, static_key: Option<[u8; 32]>, now: UnixTime) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.addr == addr) {
            if static_key.is_some() {
                e.static_key = static_key;
            }
            return;
        }
        if self.entries.len() >= Self::CAPACITY {
            let Some((worst, _)) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.score(now))
            else {
                return;
            };
            self.entries.swap_remove(worst);
        }
        self.entries.push(CacheEntry {
            addr,
            static_key,
            last_seen: UnixTime(0),
            successes: 0,
            failures: 0,
        });
    }

    /// Learn entries from a super node's list.
    pub fn merge(&mut self, entries: &[HostEntry], now: UnixTime) {
        for e in entries {
            self.insert(e.addr, Some(e.static_key), now);
        }
    }

    /// Connecting to `addr` worked.
    pub fn success(&mut self, addr: SocketAddr, static_key: [u8; 32], now: UnixTime) {
        self.insert(addr, Some(static_key), now);
        if let Some(e) = self.entries.iter_mut().find(|e| e.addr == addr) {
            e.successes = e.successes.saturating_add(1);
            e.failures = 0;
            e.last_seen = now;
        }
    }

    /// Connecting to `addr` failed.
    pub fn failure(&mut self, addr: SocketAddr) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.addr == addr) {
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// Forget `addr`.
    pub fn remove(&mut self, addr: SocketAddr) {
        self.entries.retain(|e| e.addr != addr);
    }

    /// Drop entries that keep failing or were not seen for a week (never-seen entries stay
    /// until they fail).
    pub fn prune(&mut self, now: UnixTime) {
        self.entries.retain(|e| {
            e.failures < MAX_FAILURES
                && (e.last_seen.0 == 0 || now.0.saturating_sub(e.last_seen.0) <= MAX_AGE_SECS)
        });
    }

    /// The `n` best entries not in `exclude`, best first; ties are broken by `tiebreak`
    /// (a random value per call, so nodes spread over equally good super nodes).
    pub fn best(
        &self,
        n: usize,
        exclude: &[SocketAddr],
        now: UnixTime,
        tiebreak: u64,
    ) -> Vec<CacheEntry> {
        let mut v: Vec<&CacheEntry> = self
            .entries
            .iter()
            .filter(|e| !exclude.contains(&e.addr))
            .collect();
        v.sort_by_key(|e| {
            let mix = mix64(tiebreak ^ addr_hash(&e.addr));
            (std::cmp::Reverse(e.score(now)), mix)
        });
        v.into_iter().take(n).copied().collect()
    }

    /// Up to `n` entries with known keys, best first, to hand to other nodes.
    pub fn share(&self, n: usize, now: UnixTime) -> Vec<HostEntry> {
        self.best(self.entries.len(), &[], now, 0)
            .into_iter()
            .filter_map(|e| {
                e.static_key.map(|k| HostEntry {
                    addr: e.addr,
                    static_key: k,
                })
            })
            .take(n)
            .collect()
    }

    /// The persistent form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(16 + self.entries.len() * 64);
        b.put_u8(FORMAT_VERSION);
        b.put_u16(self.entries.len() as u16);
        for e in &self.entries {
            put_addr(&mut b, &e.addr);
            match &e.static_key {
                Some(k) => {
                    b.put_u8(1);
                    b.put_slice(k);
                }
                None => b.put_u8(0),
            }
            b.put_u64(e.last_seen.0);
            b.put_u32(e.successes);
            b.put_u32(e.failures);
        }
        b.to_vec()
    }

    /// Read the persistent form (a corrupt file is an error; the caller starts empty).
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        if r.u8()? != FORMAT_VERSION {
            return Err(DecodeError::Invalid("host cache version"));
        }
        let n = usize::from(r.u16()?);
        if n > Self::CAPACITY {
            return Err(DecodeError::TooLong {
                what: "host cache",
                len: n,
                max: Self::CAPACITY,
            });
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = read_addr(&mut r)?;
            let static_key = match r.u8()? {
                0 => None,
                1 => Some(r.array()?),
                _ => return Err(DecodeError::Invalid("host cache key flag")),
            };
            entries.push(CacheEntry {
                addr,
                static_key,
                last_seen: UnixTime(r.u64()?),
                successes: r.u32()?,
                failures: r.u32()?,
            });
        }
        r.finish()?;
        Ok(Self { entries })
    }
}

fn addr_hash(a: &SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes: Vec<u8> = match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
        std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    for b in bytes.iter().chain(a.port().to_be_bytes().iter()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, proptest};

    fn a(i: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 4000))
    }

    #[test]
    fn capacity_scoring_pruning_and_persistence() {
        let now = UnixTime(1_000_000);
        let mut c = HostCache::new();
        for i in 0..300 {
            c.insert(a(i), None, now);
        }
        assert_eq!(c.len(), HostCache::CAPACITY);
        c.success(a(7), [7; 32], now);
        c.success(a(7), [7; 32], now);
        c.success(a(8), [8; 32], now);
        for _ in 0..3 {
            c.failure(a(9));
        }
        let best = c.best(3, &[], now, 42);
        assert_eq!(best[0].addr, a(7));
        assert_eq!(best[1].addr, a(8));
        assert!(!c
            .best(200, &[], now, 1)
            .iter()
            .take(150)
            .any(|e| e.addr == a(9)));
        assert!(!c.best(5, &[a(7)], now, 1).iter().any(|e| e.addr == a(7)));
        assert_eq!(c.share(10, now).len(), 2);
        // Persistence.
        let restored = HostCache::decode(&c.encode()).unwrap();
        assert_eq!(restored, c);
        // Pruning: repeated failures and old entries go.
        for _ in 0..MAX_FAILURES {
            c.failure(a(10));
        }
        c.prune(now);
        assert!(!c.entries().iter().any(|e| e.addr == a(10)));
        c.prune(UnixTime(now.0 + MAX_AGE_SECS + 1));
        assert!(!c.entries().iter().any(|e| e.addr == a(7)));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = HostCache::decode(&data);
        }
    }
}
