//! The network file: which login server, which authority keys, which bootstrap super nodes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use natter_transport::login::network::{BootstrapEntry, NetworkFile, NetworkFileError};

/// A Natter network, as its login server describes it in the network file (`network.toml`):
/// the login server's address and TLS pin, the authority keys certificates are checked
/// against, the bootstrap super nodes and the network-wide overlay settings.
///
/// ```
/// let network = natter::Network::from_toml_str(r#"
///     [login]
///     address = "login.example.org:4433"
///     server_name = "natter-login"
///
///     [authority]
///     keys = ["3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29"]
///
///     [[bootstrap]]
///     address = "198.51.100.7:4000"
/// "#)?;
/// assert_eq!(network.login_server(), "login.example.org:4433");
/// assert_eq!(network.bootstrap(), ["198.51.100.7:4000".parse()?]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub(crate) file: NetworkFile,
}

/// Why a network file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The file could not be read or written.
    #[error("network file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid network file (malformed TOML, a missing table, a bad key).
    #[error("{0}")]
    Invalid(String),
}

impl From<NetworkFileError> for NetworkError {
    fn from(e: NetworkFileError) -> Self {
        match e {
            NetworkFileError::Io { path, source } => NetworkError::Io { path, source },
            other => NetworkError::Invalid(other.to_string()),
        }
    }
}

impl Network {
    /// Read the network file at `path`.
    ///
    /// # Errors
    /// [`NetworkError::Io`] when it cannot be read, [`NetworkError::Invalid`] when it is not a
    /// valid network file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, NetworkError> {
        Ok(Self {
            file: NetworkFile::load(path.as_ref())?,
        })
    }

    /// Parse a network file's text (bundled with an application, received when provisioning).
    ///
    /// # Errors
    /// [`NetworkError::Invalid`] when it is not a valid network file.
    pub fn from_toml_str(text: &str) -> Result<Self, NetworkError> {
        Ok(Self {
            file: NetworkFile::from_toml_str(text)?,
        })
    }

    /// The login server's `host:port`.
    pub fn login_server(&self) -> &str {
        &self.file.login.address
    }

    /// The bootstrap super nodes (entries that are not `IP:PORT` are left out).
    pub fn bootstrap(&self) -> Vec<SocketAddr> {
        self.file
            .bootstrap
            .iter()
            .filter_map(|b| b.address.parse().ok())
            .collect()
    }

    /// The network-wide fallback TCP ports of super nodes (`[overlay]`; by default the main
    /// port +1 and +2).
    ///
    /// # Errors
    /// [`NetworkError::Invalid`] when the `[overlay]` table is inconsistent.
    pub fn fallback_ports(&self) -> Result<natter_core::overlay::FallbackPorts, NetworkError> {
        Ok(self.file.fallback_ports()?)
    }

    /// Add a bootstrap super node (nothing happens when it is listed already).
    pub fn add_bootstrap(&mut self, super_node: SocketAddr) {
        let address = super_node.to_string();
        if !self.file.bootstrap.iter().any(|b| b.address == address) {
            self.file.bootstrap.push(BootstrapEntry { address });
        }
    }

    /// Write the network file to `path` (atomically: a reader never sees half of it).
    ///
    /// # Errors
    /// [`NetworkError::Io`] when it cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), NetworkError> {
        Ok(self.file.save(path.as_ref())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[login]\naddress = \"127.0.0.1:1\"\nserver_name = \"n\"\n\n\
                        [authority]\nkeys = [\"cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd\"]\n";

    #[test]
    fn parses_edits_and_saves() {
        let mut n = Network::from_toml_str(TEXT).unwrap();
        assert!(n.bootstrap().is_empty());
        let sn: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        n.add_bootstrap(sn);
        n.add_bootstrap(sn);
        assert_eq!(n.bootstrap(), [sn]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.toml");
        n.save(&path).unwrap();
        assert_eq!(Network::from_file(&path).unwrap(), n);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            Network::from_toml_str("not toml ["),
            Err(NetworkError::Invalid(_))
        ));
        assert!(matches!(
            Network::from_toml_str(
                "[login]\naddress = \"a\"\nserver_name = \"n\"\n[authority]\nkeys = [\"zz\"]\n"
            ),
            Err(NetworkError::Invalid(_))
        ));
        assert!(matches!(
            Network::from_file("/nonexistent/network.toml"),
            Err(NetworkError::Io { .. })
        ));
    }
}
