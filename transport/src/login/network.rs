//! The network file: what a client or super node needs to join a Natter network.
//!
//! The login server writes it on first start (`DATA/network.toml`); operators hand it to
//! clients and super nodes. It holds the login server's address and TLS identity (a SHA-256
//! pin of its self-signed certificate, or nothing when it has a CA-issued one), the authority
//! public keys that certificates are checked against (several during a key rotation) and the
//! bootstrap super nodes.
//!
//! ```toml
//! [login]
//! address = "127.0.0.1:4433"
//! server_name = "natter-login"
//! tls_sha256 = "9f86d08..."        # omit for a CA-issued certificate
//! # ca_file = "/etc/natter/ca.pem" # extra CA roots, optional
//!
//! [authority]
//! keys = ["3b6a27bc..."]           # hex Ed25519 public keys
//!
//! [[authority.window]]             # optional: a key trusted only from/until (Unix seconds)
//! key = "3b6a27bc..."
//! not_after = 1800000000           # retired (or leaked): nothing it signed counts after this
//!
//! [[bootstrap]]
//! address = "198.18.0.10:4000"
//!
//! [overlay]                        # optional
//! fallback_ports = [80, 443]       # every super node's plain TCP and TLS fallback ports
//! # fallback_port_offsets = [1, 2] # or: offsets from each super node's main port (default)
//! ```

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use natter_core::crypto::{TrustedAuthorities, UnixTime};
use natter_core::overlay::FallbackPorts;
use serde::{Deserialize, Serialize};

/// Why a network file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetworkFileError {
    /// Reading or writing failed.
    #[error("network file {path}: {source}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed.
    #[error("network file {path}: {message}")]
    Parse {
        /// Which file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A value is invalid.
    #[error("network file: {0}")]
    Invalid(String),
}

/// The `[login]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginEntry {
    /// `host:port` of the login server.
    pub address: String,
    /// The name in its TLS certificate (SNI).
    pub server_name: String,
    /// Hex SHA-256 of its self-signed certificate (DER); clients refuse any other. Absent for
    /// a CA-issued certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_sha256: Option<String>,
    /// Extra CA roots (PEM) trusted for a CA-issued certificate, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The `[authority]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityEntry {
    /// Hex Ed25519 public keys.
    pub keys: Vec<String>,
    /// Validity windows of some of them (a key without one is trusted without limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window: Vec<AuthorityWindow>,
}

/// One `[[authority.window]]`: when a key of `keys` may be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityWindow {
    /// The key (hex, as in `keys`).
    pub key: String,
    /// Unix seconds from which it counts (default: always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// Unix seconds after which nothing it signed counts (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

/// One `[[bootstrap]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapEntry {
    /// `host:port` of a super node.
    pub address: String,
}

/// The optional `[overlay]` table: settings every node of the network must agree on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayEntry {
    /// The plain TCP and TLS fallback ports of every super node (standing in for 80 and 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_ports: Option<[u16; 2]>,
    /// Or: their offsets from each super node's main port (for several super nodes on one
    /// IP). Without either, main port +1 and +2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_port_offsets: Option<[u16; 2]>,
}

impl OverlayEntry {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Where super nodes listen besides their main port: `fallback_ports` (absolute) or
    /// `fallback_port_offsets`, else the default (main port +1 and +2).
    pub fn fallback_ports(&self) -> Result<FallbackPorts, NetworkFileError> {
        let ports = match (self.fallback_ports, self.fallback_port_offsets) {
            (Some(_), Some(_)) => {
                return Err(NetworkFileError::Invalid(
                    "[overlay] has both fallback_ports and fallback_port_offsets".into(),
                ))
            }
            (Some([plain, tls]), None) => FallbackPorts::Absolute { plain, tls },
            (None, Some([plain, tls])) => FallbackPorts::Offsets { plain, tls },
            (None, None) => FallbackPorts::default(),
        };
        ports.validate().map_err(NetworkFileError::Invalid)?;
        Ok(ports)
    }
}

/// A parsed network file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkFile {
    /// The login server.
    pub login: LoginEntry,
    /// Trusted authority keys.
    pub authority: AuthorityEntry,
    /// Bootstrap super nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap: Vec<BootstrapEntry>,
    /// Overlay settings (absent from older files: the defaults).
    #[serde(default, skip_serializing_if = "OverlayEntry::is_empty")]
    pub overlay: OverlayEntry,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse hex into exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl NetworkFile {
    /// Read and parse a network file.
    pub fn load(path: &Path) -> Result<Self, NetworkFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| NetworkFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse a network file's text (read from somewhere else than a file: an application's
    /// resources, a provisioning message). Parse errors name the path `<string>`.
    pub fn from_toml_str(text: &str) -> Result<Self, NetworkFileError> {
        Self::parse(text, Path::new("<string>"))
    }

    fn parse(text: &str, path: &Path) -> Result<Self, NetworkFileError> {
        let file: Self = toml::from_str(text).map_err(|e| NetworkFileError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        file.trusted()?;
        file.fallback_ports()?;
        Ok(file)
    }

    /// Write it (world-readable: it holds only public information), atomically: the text goes
    /// to a temporary file in the same directory, which then replaces `path`, so a crash or a
    /// full disk never leaves a truncated network file. A file being replaced keeps its
    /// permissions.
    pub fn save(&self, path: &Path) -> Result<(), NetworkFileError> {
        let text = format!(
            "# Natter network file: give it to clients and super nodes.\n{}",
            toml::to_string_pretty(self).map_err(|e| NetworkFileError::Invalid(e.to_string()))?
        );
        let io_err = |source| NetworkFileError::Io {
            path: path.to_owned(),
            source,
        };
        let name = path.file_name().ok_or_else(|| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a file name",
            ))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            if let Ok(meta) = std::fs::metadata(path) {
                f.set_permissions(meta.permissions())?;
            }
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(e)
        })
    }

    /// The trusted authority keys.
    pub fn trusted(&self) -> Result<TrustedAuthorities, NetworkFileError> {
        let mut t = TrustedAuthorities::default();
        for k in &self.authority.keys {
            t.add(unhex::<32>(k).ok_or_else(|| {
                NetworkFileError::Invalid(format!("authority key {k:?} is not 64 hex digits"))
            })?);
        }
        if t.is_empty() {
            return Err(NetworkFileError::Invalid("no authority key".into()));
        }
        for (i, w) in self.authority.window.iter().enumerate() {
            if self.authority.window[..i]
                .iter()
                .any(|o| o.key.eq_ignore_ascii_case(&w.key))
            {
                return Err(NetworkFileError::Invalid(format!(
                    "two authority windows for {:?}: give one with both ends",
                    w.key
                )));
            }
            let key = unhex::<32>(&w.key)
                .filter(|_| {
                    self.authority
                        .keys
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(&w.key))
                })
                .ok_or_else(|| {
                    NetworkFileError::Invalid(format!(
                        "authority window for {:?}, which is not one of the keys",
                        w.key
                    ))
                })?;
            let (from, until) = (w.not_before.unwrap_or(0), w.not_after.unwrap_or(u64::MAX));
            if from > until {
                return Err(NetworkFileError::Invalid(format!(
                    "authority window for {:?} ends before it starts",
                    w.key
                )));
            }
            t.add_with_window(key, UnixTime(from), UnixTime(until));
        }
        Ok(t)
    }

    /// The login server's socket address (resolving a host name if needed).
    pub fn login_address(&self) -> Result<SocketAddr, NetworkFileError> {
        self.login
            .address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                NetworkFileError::Invalid(format!("login address {:?}", self.login.address))
            })
    }

    /// Where super nodes listen besides their main port: see [`OverlayEntry::fallback_ports`].
    pub fn fallback_ports(&self) -> Result<FallbackPorts, NetworkFileError> {
        self.overlay.fallback_ports()
    }

    /// The pinned certificate fingerprint, if any.
    pub fn pin(&self) -> Result<Option<[u8; 32]>, NetworkFileError> {
        self.login
            .tls_sha256
            .as_deref()
            .map(|p| {
                unhex::<32>(p).ok_or_else(|| {
                    NetworkFileError::Invalid("tls_sha256 is not 64 hex digits".into())
                })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn roundtrip_and_validation() {
        let f = NetworkFile {
            login: LoginEntry {
                address: "127.0.0.1:4433".into(),
                server_name: "natter-login".into(),
                tls_sha256: Some(hex(&[0xab; 32])),
                ca_file: None,
            },
            authority: AuthorityEntry {
                keys: vec![hex(&[1; 32]), hex(&[2; 32])],
                window: vec![AuthorityWindow {
                    key: hex(&[1; 32]),
                    not_before: None,
                    not_after: Some(1_800_000_000),
                }],
            },
            bootstrap: vec![],
            overlay: OverlayEntry::default(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network.toml");
        f.save(&p).unwrap();
        let g = NetworkFile::load(&p).unwrap();
        assert_eq!(f, g);
        assert_eq!(g.pin().unwrap(), Some([0xab; 32]));
        assert_eq!(g.trusted().unwrap().keys().count(), 2);
        // A window for a key that is not listed, or one that ends before it starts: refused.
        let mut bad = f.clone();
        bad.authority.window[0].key = hex(&[3; 32]);
        assert!(bad.trusted().is_err());
        let mut bad = f.clone();
        bad.authority.window[0].not_before = Some(1_900_000_000);
        assert!(bad.trusted().is_err());
        let mut bad = f.clone();
        bad.authority.window.push(bad.authority.window[0].clone());
        assert!(bad.trusted().is_err(), "two windows for one key");
        // Saving again replaces the file atomically: same permissions, no temporary left.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        f.save(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["network.toml"]);
        assert_eq!(NetworkFile::load(&p).unwrap(), f);
        std::fs::write(&p, "[login]\naddress = 1\n").unwrap();
        assert!(NetworkFile::load(&p).is_err());
        assert_eq!(unhex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(unhex::<2>("0aF"), None);
    }

    #[test]
    fn fallback_ports_default_and_are_configurable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network.toml");
        let base = format!(
            "[login]\naddress = \"127.0.0.1:4433\"\nserver_name = \"n\"\n\n\
             [authority]\nkeys = [\"{}\"]\n",
            hex(&[1; 32])
        );
        // A file without [overlay] (every file written before it existed): +1 and +2.
        std::fs::write(&p, &base).unwrap();
        let f = NetworkFile::load(&p).unwrap();
        assert_eq!(f.fallback_ports().unwrap(), FallbackPorts::default());
        assert!(!std::fs::read_to_string(&p).unwrap().contains("overlay"));
        f.save(&p).unwrap();
        assert!(
            !std::fs::read_to_string(&p).unwrap().contains("[overlay]"),
            "defaults are not written out"
        );
        // Absolute ports, as an operator writes them; they survive a save.
        std::fs::write(
            &p,
            format!("{base}\n[overlay]\nfallback_ports = [80, 443]\n"),
        )
        .unwrap();
        let f = NetworkFile::load(&p).unwrap();
        assert_eq!(
            f.fallback_ports().unwrap(),
            FallbackPorts::Absolute {
                plain: 80,
                tls: 443
            }
        );
        f.save(&p).unwrap();
        assert_eq!(NetworkFile::load(&p).unwrap(), f);
        // Offsets.
        std::fs::write(
            &p,
            format!("{base}\n[overlay]\nfallback_port_offsets = [10, 20]\n"),
        )
        .unwrap();
        assert_eq!(
            NetworkFile::load(&p).unwrap().fallback_ports().unwrap(),
            FallbackPorts::Offsets { plain: 10, tls: 20 }
        );
        // Both, or nonsense: refused when loading.
        for bad in [
            "fallback_ports = [80, 443]\nfallback_port_offsets = [1, 2]",
            "fallback_ports = [443, 443]",
            "fallback_ports = [0, 443]",
            "fallback_ports = [80]",
        ] {
            std::fs::write(&p, format!("{base}\n[overlay]\n{bad}\n")).unwrap();
            assert!(NetworkFile::load(&p).is_err(), "{bad}");
        }
    }
}
