//! HTTPS: self-signed and user certificates picked by SNI, ALPN HTTP/2, `Alt-Svc`, the plain listener with
//! and without `redirect_https`, and certificate reload (a changed file is picked up, a broken one is not).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_gateway::{CertificateFiles, GatewayConfig, RoutingTable, ServiceRoutes, TlsConfig};
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::support::{Answer, MockUpstream, PATIENCE, Reply, TestClient, TestGateway, config};

/// A certificate authority made for one test, and the leaf certificates it signs.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "berth test CA");
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa { issuer: rcgen::Issuer::new(params, key), cert_pem: cert.pem() }
    }

    /// Writes a new leaf for `names` to `<dir>/<stem>.crt` (leaf + CA chain) and `.key`; returns its DER.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> (CertificateFiles, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a leaf key");
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf parameters");
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        let files = CertificateFiles { cert: dir.join(format!("{stem}.crt")), key: dir.join(format!("{stem}.key")) };
        std::fs::write(&files.cert, format!("{}{}", cert.pem(), self.cert_pem)).expect("write the leaf");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the leaf key");
        (files, cert.der().to_vec())
    }

    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write the CA");
        path
    }
}

/// What a TLS client saw: the server's leaf certificate, the ALPN protocol, and the answer.
pub struct TlsAnswer {
    pub peer_cert: Vec<u8>,
    pub answer: Answer,
    pub version: Version,
}

/// One request over a fresh TLS connection to `addr` with SNI `host`, trusting the PEM file `ca`, offering
/// `alpn` (the first wins when the server has it).
pub async fn https_request(
    addr: std::net::SocketAddr,
    host: &str,
    ca: &Path,
    alpn: &[&[u8]],
    req: Request<Full<Bytes>>,
) -> Result<TlsAnswer, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let stream = connector.connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
        let (_, conn) = stream.get_ref();
        let peer_cert =
            conn.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec()).unwrap_or_default();
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let started = std::time::Instant::now();
        let io = TokioIo::new(stream);
        let res = if h2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(|e| e.to_string())?
        };
        let version = res.version();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let answer = Answer { status: parts.status, headers: parts.headers, body, took: started.elapsed() };
        Ok(TlsAnswer { peer_cert, answer, version })
    };
    tokio::time::timeout(PATIENCE, exchange).await.map_err(|_| "no answer in time".to_owned())?
}

pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://{host}{path}")).body(Full::default()).expect("valid request")
}

/// Two services: `web` (also `web.test`) and `api` (also `api.example.com`), `web` the default.
pub fn two_services(web: &MockUpstream, api: &MockUpstream) -> RoutingTable {
    let service = |name: &str, host: &str, upstream: &MockUpstream| ServiceRoutes {
        name: name.to_owned(),
        hosts: vec![host.to_owned()],
        endpoints: vec![upstream.grouped()],
        ..ServiceRoutes::default()
    };
    RoutingTable {
        services: vec![service("web", "web.test", web), service("api", "api.example.com", api)],
        default_service: Some("web".to_owned()),
    }
}

pub fn tls_config(dir: &Path, certificates: Vec<CertificateFiles>) -> GatewayConfig {
    GatewayConfig { tls: Some(TlsConfig { certificates, self_signed_dir: dir.join("certs") }), ..config() }
}

#[tokio::test]
async fn self_signed_certificates_are_generated_per_service_and_served_by_sni() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let table = two_services(&web, &api);
    let gw = TestGateway::start_secure(tls_config(tmp.path(), Vec::new()), &table).await;
    let certs = tmp.path().join("certs");

    let res = https_request(gw.https_addr(), "web.test", &certs.join("web.crt"), &[b"http/1.1"], get("web.test", "/"))
        .await
        .expect("the client trusts web's self-signed certificate");
    assert_eq!(res.answer.status, StatusCode::OK);
    assert_eq!(res.answer.body, "web");
    assert_eq!(res.version, Version::HTTP_11);
    let seen = web.seen();
    assert_eq!(seen.last().expect("web got the request").headers["x-forwarded-proto"], "https");

    // `api` has a certificate of its own: web's does not verify for it, api's does.
    let wrong =
        https_request(gw.https_addr(), "api.localhost", &certs.join("web.crt"), &[], get("api.localhost", "/")).await;
    assert!(wrong.is_err(), "api.localhost must not be served web's certificate");
    let res = https_request(gw.https_addr(), "api.localhost", &certs.join("api.crt"), &[], get("api.localhost", "/"))
        .await
        .expect("api's certificate");
    assert_eq!(res.answer.body, "api");
    let key_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(certs.join("api.key")).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600);

    // A restart reuses the stored certificates.
    let first = std::fs::read(certs.join("web.crt")).expect("web.crt");
    drop(gw);
    let gw = TestGateway::start_secure(tls_config(tmp.path(), Vec::new()), &table).await;
    assert_eq!(std::fs::read(certs.join("web.crt")).expect("web.crt"), first);
    let res = https_request(gw.https_addr(), "web.localhost", &certs.join("web.crt"), &[], get("web.localhost", "/"))
        .await
        .expect("the same certificate after a restart");
    assert_eq!(res.answer.status, StatusCode::OK);
}

#[tokio::test]
async fn a_user_certificate_is_picked_by_sni_and_http2_is_negotiated() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let (files, leaf) = ca.issue(tmp.path(), "example", &["*.example.com"]);
    let ca_file = ca.write_ca(tmp.path());
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let gw = TestGateway::start_secure(tls_config(tmp.path(), vec![files]), &two_services(&web, &api)).await;

    let res = https_request(
        gw.https_addr(),
        "api.example.com",
        &ca_file,
        &[b"h2", b"http/1.1"],
        get("api.example.com", "/x"),
    )
    .await
    .expect("the user's wildcard certificate serves api.example.com");
    assert_eq!(res.peer_cert, leaf);
    assert_eq!(res.version, Version::HTTP_2, "ALPN picks HTTP/2");
    assert_eq!(res.answer.status, StatusCode::OK);
    assert_eq!(res.answer.body, "api");

    // The other service keeps its self-signed certificate; the user's covers none of its names.
    let certs = tmp.path().join("certs");
    let res = https_request(gw.https_addr(), "web.test", &certs.join("web.crt"), &[b"h2"], get("web.test", "/"))
        .await
        .expect("web's self-signed certificate");
    assert_ne!(res.peer_cert, leaf);
    assert_eq!(res.answer.body, "web");
    // No self-signed certificate was made for a name the user's certificate covers.
    let api_names = std::fs::read(certs.join("api.crt")).expect("api.crt for api.localhost");
    let (_, api_cert) = x509_parser::pem::parse_x509_pem(&api_names).expect("PEM");
    let api_cert = api_cert.parse_x509().expect("certificate");
    let san = api_cert.subject_alternative_name().expect("SAN").expect("SAN present");
    assert_eq!(format!("{:?}", san.value.general_names), r#"[DNSName("api.localhost")]"#);
}

#[tokio::test]
async fn plain_http_serves_or_redirects_and_every_listener_advertises_http3() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let mut table = two_services(&web, &api);
    table.services[1].redirect_https = true;
    let gw = TestGateway::start_secure(tls_config(tmp.path(), Vec::new()), &table).await;
    let port = gw.https_addr().port();
    let alt_svc = format!("h3=\":{port}\"; ma=86400");
    let client = TestClient::new();

    let plain = client.get(&gw.url("/page")).await;
    assert_eq!(plain.status, StatusCode::OK, "no redirect without `redirect_https`");
    assert_eq!(plain.body, "web");
    assert_eq!(plain.headers["alt-svc"], alt_svc.as_str());
    assert_eq!(web.seen().last().expect("web got it").headers["x-forwarded-proto"], "http");

    let req = Request::get(gw.url("/a/b?c=1")).header("host", "api.example.com:80").body(Full::default()).unwrap();
    let redirected = client.send(req).await;
    assert_eq!(redirected.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirected.headers["location"], format!("https://api.example.com:{port}/a/b?c=1").as_str());
    assert_eq!(api.hits(), 0, "a redirected request never reaches the service");

    let certs = tmp.path().join("certs");
    let res =
        https_request(gw.https_addr(), "api.localhost", &certs.join("api.crt"), &[b"h2"], get("api.localhost", "/"))
            .await
            .expect("HTTPS to the redirecting service");
    assert_eq!(res.answer.status, StatusCode::OK, "HTTPS itself is served");
    assert_eq!(res.answer.headers["alt-svc"], alt_svc.as_str());
}

#[tokio::test]
async fn changed_certificate_files_are_reloaded_and_broken_ones_keep_the_old_certificate() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new();
    let ca_file = ca.write_ca(tmp.path());
    let (files, first) = ca.issue(tmp.path(), "example", &["api.example.com"]);
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let table = two_services(&web, &api);
    let gw = TestGateway::start_secure(tls_config(tmp.path(), vec![files.clone()]), &table).await;
    let served = || async {
        https_request(gw.https_addr(), "api.example.com", &ca_file, &[], get("api.example.com", "/"))
            .await
            .expect("handshake with the user certificate")
            .peer_cert
    };
    assert_eq!(served().await, first);

    // Replaced on disk: picked up by the file watch, without any routing update.
    let (_, second) = ca.issue(tmp.path(), "example", &["api.example.com"]);
    assert_ne!(second, first);
    let mut latest = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < deadline {
        latest = served().await;
        if latest == second {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(latest, second, "the new certificate is served within {PATIENCE:?}");

    // A broken certificate file (and then a key that belongs to another certificate) changes nothing; a
    // routing update re-reads the files at once, so the check does not race the watch.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("break the file");
    gw.gateway.update(&table);
    assert_eq!(served().await, second, "a broken file keeps the previous certificate");
    let (other, _) = ca.issue(tmp.path(), "other", &["api.example.com"]);
    std::fs::copy(&other.key, &files.key).expect("copy a foreign key");
    let (_, third_cert) = ca.issue(tmp.path(), "third", &["api.example.com"]);
    std::fs::copy(tmp.path().join("third.crt"), &files.cert).expect("a cert that does not match the key");
    gw.gateway.update(&table);
    assert_eq!(served().await, second, "a key that does not match keeps the previous certificate");

    // Fixed: the watch picks it up again.
    std::fs::copy(tmp.path().join("third.key"), &files.key).expect("the matching key");
    let picked_up = {
        let mut latest = Vec::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline && latest != third_cert {
            latest = served().await;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        latest == third_cert
    };
    assert!(picked_up, "a fixed file is loaded again");
}
