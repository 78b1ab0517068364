//! A blocking HTTPS/1.1 client for tests (rustls, ring): one request per connection, trusting the
//! certificates of a PEM file, with SNI set to the host asked for.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};

/// `GET <path>` with `Host: <host>` (and SNI `<host>`) over TLS to `addr`, trusting the PEM certificates in
/// `ca`. Returns the status, the raw response head and the body (the response must not be chunked).
pub fn https_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    ca: &Path,
    timeout: Duration,
) -> Result<(u16, String, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("unusable certificate in {}: {e}", ca.display()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("bad server name {host}: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| format!("TLS write to {addr} failed: {e}"))?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Some servers close without close_notify; what arrived is still the response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(format!("TLS read from {addr} failed: {e}")),
    }
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no complete response head")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status =
        head.get(9..12).and_then(|code| code.parse().ok()).ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, head, response[split + 4..].to_vec()))
}
