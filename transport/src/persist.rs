//! Node state kept on disk between runs: the host cache.

use std::io;
use std::path::Path;

use natter_core::overlay::HostCache;

/// Load the host cache from `path`; a missing or corrupt file gives an empty cache (the node
/// falls back to the network file's bootstrap list), and a corrupt one is logged.
pub fn load_host_cache(path: &Path) -> HostCache {
    match std::fs::read(path) {
        Ok(data) => HostCache::decode(&data).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "host cache unreadable; starting empty");
            HostCache::new()
        }),
        Err(_) => HostCache::new(),
    }
}

/// Save the host cache to `path` atomically (write a temporary file, then rename).
pub fn save_host_cache(path: &Path, cache: &HostCache) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, cache.encode())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_core::crypto::UnixTime;

    #[test]
    fn survives_restart_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hostcache.bin");
        assert!(load_host_cache(&p).is_empty());
        let mut c = HostCache::new();
        c.success("198.18.0.1:4000".parse().unwrap(), [1; 32], UnixTime(5));
        save_host_cache(&p, &c).unwrap();
        assert_eq!(load_host_cache(&p), c);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(load_host_cache(&p).is_empty());
    }
}
