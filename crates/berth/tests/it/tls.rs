//! HTTPS and HTTP/3 through the real daemon to a replica of the example service, with the self-signed
//! certificate the daemon generated in its state dir; `redirect_https` on the plain listener.

use std::time::Duration;

use berth_test_support::h3_client::{Trust, h3_get};
use berth_test_support::{http_request, https_get, wait_until};

use crate::support::*;

#[test]
fn https_and_http3_reach_a_replica_and_plain_http_redirects_when_asked() {
    let (_root, daemon) = hello_daemon("web", 1, "redirect_https = true");
    let https = daemon.https_addr();
    let cert = daemon.state_dir().join("certs").join("web.crt");
    let alt_svc = format!("alt-svc: h3=\":{}\"; ma=86400", https.port());

    let (status, head, _) =
        https_get(https, "web.localhost", "/", &cert, Duration::from_secs(5)).expect("HTTPS to the replica");
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains(&alt_svc), "{head}");

    let (status, headers, _) =
        http_request(daemon.gateway_addr(), "GET", "/x?y=1", &[("Host", "web.localhost")], b"", Duration::from_secs(5))
            .expect("plain HTTP answers");
    assert_eq!(status, 308);
    let location = headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("location")).map(|(_, v)| v.as_str());
    assert_eq!(location, Some(format!("https://web.localhost:{}/x?y=1", https.port()).as_str()));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let res =
        runtime.block_on(h3_get(https, "web.localhost", "/", &Trust::CaFile(cert))).expect("HTTP/3 to the replica");
    assert_eq!(res.status, 200);
}

/// A CA and a leaf certificate for `names`, written as PEM files into `dir`: (ca, cert, key).
fn user_certificate(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate a leaf key");
    let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("leaf parameters");
    let cert = params.signed_by(&key, &issuer).expect("sign the leaf");
    let paths = (dir.join("ca.pem"), dir.join("site.pem"), dir.join("site.key"));
    std::fs::write(&paths.0, ca_cert.pem()).expect("write the CA");
    std::fs::write(&paths.1, cert.pem()).expect("write the certificate");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write the key");
    (paths.0, paths.1, paths.2)
}

#[test]
fn berth_toml_gives_the_user_certificate_and_turns_the_access_log_on() {
    let root = berth_test_support::temp_dir();
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir certs");
    let (ca, _, _) = user_certificate(&certs, &["api.example.test"]);
    std::fs::write(
        root.path().join("berth.toml"),
        "[gateway]\naccess_log = true\n\n[[certificates]]\ncert = \"certs/site.pem\"\nkey = \"certs/site.key\"\n",
    )
    .expect("write berth.toml");
    service_dir(root.path(), "api", &hello_spec("api", 1, "domains = [\"api.example.test\"]"));
    // `up ROOT`: the services are ROOT's subdirectories and the platform config is ROOT/berth.toml.
    let daemon = berth_test_support::Daemon::start(berth(), &root.path().join("state"), &[root.path()]);
    wait_healthy(&daemon, "api", 1);

    let https = daemon.https_addr();
    let (status, head, _) = https_get(https, "api.example.test", "/", &ca, Duration::from_secs(5))
        .expect("HTTPS with the user certificate");
    assert_eq!(status, 200, "{head}");
    // The self-signed certificate is still what api.localhost gets: it does not chain to the user's CA.
    let self_signed = https_get(https, "api.localhost", "/", &ca, Duration::from_secs(5));
    assert!(self_signed.is_err(), "api.localhost is not covered by the user certificate: {self_signed:?}");

    // berth.toml turned the access log on: the request above is in the daemon's log.
    wait_until(Duration::from_secs(5), "an access log line", || {
        let out = std::fs::read_to_string(daemon.state_dir().join("daemon.out")).ok()?;
        out.lines().find(|line| line.contains("berth::access") && line.contains("api.example.test")).map(str::to_owned)
    });
}

#[test]
fn the_standalone_gateway_removes_its_self_signed_certificates_when_it_stops() {
    let tmp = berth_test_support::temp_dir();
    /// Kills the gateway if the test fails before it has stopped.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut gateway = Running(
        std::process::Command::new(berth())
            .args(["gateway", "--listen", "127.0.0.1:0", "--https", "127.0.0.1:0", "--no-http3"])
            .args(["--upstream", "127.0.0.1:9"])
            .env("TMPDIR", tmp.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start berth gateway"),
    );
    let keys = || -> Vec<std::path::PathBuf> {
        let dirs = std::fs::read_dir(tmp.path()).into_iter().flatten().flatten().map(|entry| entry.path());
        dirs.flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten().map(|entry| entry.path()))
            .filter(|file| file.extension().is_some_and(|ext| ext == "key"))
            .collect()
    };
    let running = wait_until(Duration::from_secs(30), "a self-signed key under TMPDIR", || {
        let found = keys();
        (!found.is_empty()).then_some(found)
    });
    signal(gateway.0.id() as i32, libc::SIGTERM);
    let status = wait_until(Duration::from_secs(10), "the gateway to exit on SIGTERM", || {
        gateway.0.try_wait().expect("wait for the gateway")
    });
    assert!(status.success(), "{status}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).expect("TMPDIR").flatten().map(|entry| entry.path()).collect();
    assert!(left.is_empty(), "left behind after {running:?}: {left:?}");
}
