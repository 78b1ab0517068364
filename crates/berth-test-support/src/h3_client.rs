//! A test HTTP/3 client built from quinn, h3 and rustls (ring): one request on a fresh QUIC connection,
//! trusting a given CA file (or anything, for tests that check other things than the certificate).
//!
//! Unlike the rest of this crate it is async: it runs on the calling test's tokio runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http::{HeaderMap, Request, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Which server certificates the client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates that chain to the CA (or self-signed certificate) in this PEM file.
    CaFile(PathBuf),
    /// Any certificate (the handshake signature is still checked).
    Insecure,
}

/// An HTTP/3 response as the client got it.
#[derive(Debug)]
pub struct H3Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// The server's end-entity certificate.
    pub peer_cert: Option<CertificateDer<'static>>,
}

/// `GET https://<host><path>` over HTTP/3 to `addr`.
pub async fn h3_get(addr: SocketAddr, host: &str, path: &str, trust: &Trust) -> Result<H3Answer, String> {
    let req = Request::get(format!("https://{host}{path}")).body(Bytes::new()).map_err(|e| e.to_string())?;
    h3_request(addr, req, trust).await
}

/// Sends `req` (its URI names the host, used for SNI) over HTTP/3 to `addr`, with its body, within 10 s.
pub async fn h3_request(addr: SocketAddr, req: Request<Bytes>, trust: &Trust) -> Result<H3Answer, String> {
    tokio::time::timeout(Duration::from_secs(10), exchange(addr, req, trust))
        .await
        .map_err(|_| "no HTTP/3 answer within 10 s".to_owned())?
}

async fn exchange(addr: SocketAddr, req: Request<Bytes>, trust: &Trust) -> Result<H3Answer, String> {
    let host = req.uri().host().ok_or("the request URI names no host")?.to_owned();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(trust)?)
        .with_no_client_auth();
    if matches!(trust, Trust::Insecure) {
        tls.dangerous().set_certificate_verifier(Arc::new(AnyCertificate));
    }
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().map_err(|_| "bad bind address")?)
        .map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(addr, &host)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| format!("QUIC connection to {addr} failed: {e}"))?;
    let peer_cert = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned());
    let (mut driver, mut send_request) =
        h3::client::new(h3_quinn::Connection::new(connection)).await.map_err(|e| e.to_string())?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });

    let (parts, body) = req.into_parts();
    let mut stream = send_request.send_request(Request::from_parts(parts, ())).await.map_err(|e| e.to_string())?;
    if !body.is_empty() {
        stream.send_data(body).await.map_err(|e| e.to_string())?;
    }
    stream.finish().await.map_err(|e| e.to_string())?;
    let res = stream.recv_response().await.map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.map_err(|e| e.to_string())? {
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    let trailers = stream.recv_trailers().await.map_err(|e| e.to_string())?;
    drop(send_request);
    drive.abort();
    endpoint.close(0u32.into(), b"done");
    Ok(H3Answer { status: res.status(), headers: res.headers().clone(), body: body.into(), trailers, peer_cert })
}

fn roots(trust: &Trust) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Trust::CaFile(path) = trust {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))? {
            let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("unusable certificate in {}: {e}", path.display()))?;
        }
    }
    Ok(roots)
}

/// Accepts any certificate, still checking that the server holds its key.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
