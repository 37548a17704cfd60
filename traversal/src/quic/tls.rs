//! TLS inside QUIC as a transport only (spec §14.2.1): a fresh self-signed certificate, ALPN
//! `ferry/2`, and a client that accepts any certificate. Who the peer is, is proven by Ferry's
//! own handshake inside the stream (§13), never by this layer.

use std::io;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// The ALPN protocol id of a QUIC connection carrying Ferry frames (§14.2).
pub const ALPN: &[u8] = b"ferry/2";

/// The server name a dialer sends (SNI); it is not checked (§14.2.1).
pub(crate) const SERVER_NAME: &str = "ferry";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("quic tls setup: {what}: {error}"))
}

pub(crate) fn server_crypto() -> io::Result<QuicServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
        .map_err(|e| tls_error("self-signed certificate", e))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .map_err(|e| tls_error("certificate", e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    QuicServerConfig::try_from(config).map_err(|e| tls_error("quic server", e))
}

pub(crate) fn client_crypto() -> io::Result<QuicClientConfig> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("protocol versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerousAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    QuicClientConfig::try_from(config).map_err(|e| tls_error("quic client", e))
}

/// Accepts any server certificate, still checking that the server holds its key (the TLS 1.3
/// CertificateVerify signature). Sound only because the stream's first bytes are Ferry's own
/// handshake, which authenticates the peer and binds the session keys (§14.2.1).
#[derive(Debug)]
struct DangerousAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for DangerousAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.2 is never offered (QUIC requires 1.3).
        Err(rustls::Error::General("tls 1.2 is not used by quic".into()))
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
