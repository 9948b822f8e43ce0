//! TLS for the login server: a self-signed certificate made on first start (clients pin its
//! SHA-256), or a CA-issued one; TLS 1.3 only, with rustls and its ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    ring as provider, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// A certificate chain and its private key.
pub struct TlsIdentity {
    /// End-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field(
                "fingerprint",
                &crate::login::network::hex(&self.fingerprint()),
            )
            .finish_non_exhaustive()
    }
}

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating the certificate failed.
    #[error("generating the TLS certificate: {0}")]
    Generate(String),
    /// Reading PEM or DER files failed.
    #[error("TLS files: {0}")]
    Files(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// SHA-256 of a DER certificate (what the network file pins).
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TlsIdentity {
    /// A new self-signed certificate for `server_name` (and 127.0.0.1 / localhost).
    pub fn self_signed(server_name: &str) -> Result<Self, TlsError> {
        let names = vec![
            server_name.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(Self {
            chain: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        })
    }

    /// The end-entity certificate's fingerprint.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.chain.first().map(fingerprint).unwrap_or_default()
    }

    /// Load a PEM certificate chain and PEM private key (e.g. CA-issued).
    pub fn from_pem_files(chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Files(format!("{}: {e}", p.display())))
        };
        let chain_pem = read(chain)?;
        let key_pem = read(key)?;
        let chain: Vec<_> = rustls_pemfile::certs(&mut &chain_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Files(e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| TlsError::Files(e.to_string()))?
            .ok_or_else(|| TlsError::Files(format!("{}: no private key", key.display())))?;
        if chain.is_empty() {
            return Err(TlsError::Files(format!(
                "{}: no certificate",
                chain_pem.len()
            )));
        }
        Ok(Self { chain, key })
    }

    /// Store as DER files: `cert.der` (world-readable) and `key.der` (owner only).
    pub fn save_der(&self, cert: &Path, key: &Path) -> std::io::Result<()> {
        std::fs::write(
            cert,
            self.chain.first().map(|c| c.as_ref()).unwrap_or_default(),
        )?;
        crate::login::files::write_private(key, self.key.secret_der())
    }

    /// Load what [`TlsIdentity::save_der`] wrote.
    pub fn load_der(cert: &Path, key: &Path) -> std::io::Result<Self> {
        let c = std::fs::read(cert)?;
        let k = std::fs::read(key)?;
        Ok(Self {
            chain: vec![CertificateDer::from(c)],
            key: PrivateKeyDer::Pkcs8(k.into()),
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(provider::default_provider())
}

/// The login server's TLS configuration: TLS 1.3 only.
pub fn server_config(identity: &TlsIdentity) -> Result<Arc<ServerConfig>, TlsError> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    Ok(Arc::new(cfg))
}

/// The error a pinned verifier reports on a fingerprint mismatch.
#[derive(Debug)]
pub struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the login server's TLS certificate does not match the pinned fingerprint")
    }
}

impl std::error::Error for PinMismatch {}

/// True when a rustls error is our pin mismatch.
pub fn is_pin_mismatch(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(CertificateError::Other(o)) if o.to_string() == PinMismatch.to_string())
}

/// Accepts exactly one certificate (by SHA-256), and checks the handshake signatures with it.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The pin is public (it is in the network file): no constant-time comparison needed.
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration: pinned to `pin` when given, else standard WebPKI verification
/// against the system's roots plus those in `ca_file`.
pub fn client_config(
    pin: Option<[u8; 32]>,
    ca_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let cfg = if let Some(pin) = pin {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider }))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| TlsError::Files(format!("{}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| TlsError::Files(e.to_string()))?;
                roots.add(cert)?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}
