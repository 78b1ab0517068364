//! Certificates from files: user PEM pairs (chain + key, names read from the SAN), and self-signed
//! certificates generated per service and kept on disk (ECDSA P-256, reused across restarts, regenerated
//! before they expire or when the names they must cover change).

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::CertificateFiles;

/// How long a generated certificate is valid.
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// A generated certificate is replaced once it expires within this long.
pub(crate) const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// A certificate ready to serve, with what it says about itself.
#[derive(Clone)]
pub(crate) struct Loaded {
    pub(crate) key: Arc<CertifiedKey>,
    /// DNS names of the SAN, lowercase (wildcards as `*.example.com`).
    pub(crate) names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub(crate) not_after: i64,
}

/// What identifies a file's version without reading it: size, inode and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    ino: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (expected `-----BEGIN CERTIFICATE-----`)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no usable PEM private key (expected PKCS#8, SEC1 or PKCS#1): {detail}", path.display())]
    NoKey { path: PathBuf, detail: String },
    #[error("{} is not valid PEM: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("the key in {} does not belong to the certificate in {}: {detail}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf, detail: String },
    #[error("the certificate in {} cannot be parsed: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
    #[error("the certificate in {} names no DNS name in its subject alternative names", path.display())]
    NoNames { path: PathBuf },
    #[error("cannot generate a self-signed certificate for {names:?}: {detail}")]
    Generate { names: Vec<String>, detail: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        Some(FileStamp { len: meta.len(), ino: meta.ino(), modified: meta.modified().ok() })
    }
}

/// Loads a user's certificate chain and key, checks that they belong together and reads the SAN names.
pub(crate) fn load_user(files: &CertificateFiles, provider: &CryptoProvider) -> Result<Loaded, CertError> {
    let cert_pem = fs::read(&files.cert).map_err(|source| CertError::Read { path: files.cert.clone(), source })?;
    let key_pem = fs::read(&files.key).map_err(|source| CertError::Read { path: files.key.clone(), source })?;
    load_pem(&cert_pem, &key_pem, &files.cert, &files.key, provider)
}

/// Returns the self-signed certificate `<dir>/<label>.crt` (+ `.key`) covering exactly `names`: the stored
/// one when it does and stays valid beyond `RENEW_BEFORE`, otherwise a new one, stored (key mode 0600).
pub(crate) fn self_signed(
    dir: &Path,
    label: &str,
    names: &[String],
    provider: &CryptoProvider,
) -> Result<Loaded, CertError> {
    let cert_path = dir.join(format!("{label}.crt"));
    let key_path = dir.join(format!("{label}.key"));
    let mut wanted: Vec<String> = names.iter().map(|name| name.to_ascii_lowercase()).collect();
    wanted.sort();
    wanted.dedup();
    if let (Ok(cert_pem), Ok(key_pem)) = (fs::read(&cert_path), fs::read(&key_path)) {
        // A stored pair that cannot be used (damaged, other names, expiring) is simply replaced.
        if let Ok(stored) = load_pem(&cert_pem, &key_pem, &cert_path, &key_path, provider) {
            let mut stored_names = stored.names.clone();
            stored_names.sort();
            if stored_names == wanted && !expires_within(stored.not_after, RENEW_BEFORE) {
                return Ok(stored);
            }
        }
    }
    let (cert_pem, key_pem) = generate(&wanted)?;
    fs::create_dir_all(dir).map_err(|source| CertError::Write { path: dir.to_owned(), source })?;
    write_atomically(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomically(&cert_path, cert_pem.as_bytes(), 0o644)?;
    load_pem(cert_pem.as_bytes(), key_pem.as_bytes(), &cert_path, &key_path, provider)
}

/// Whether a certificate valid until `not_after` (Unix seconds) expires within `window` from now.
pub(crate) fn expires_within(not_after: i64, window: Duration) -> bool {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    not_after - now < window.as_secs() as i64
}

fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertError::Pem { path: cert_path.to_owned(), detail: error.to_string() })?;
    let Some(leaf) = chain.first() else { return Err(CertError::NoCertificate { path: cert_path.to_owned() }) };
    let (names, not_after) = describe(leaf.as_ref(), cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| CertError::NoKey { path: key_path.to_owned(), detail: error.to_string() })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|error| CertError::KeyMismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        detail: error.to_string(),
    })?;
    Ok(Loaded { key: Arc::new(key), names, not_after })
}

/// The DNS names of a certificate's SAN (lowercase) and the end of its validity.
fn describe(der: &[u8], path: &Path) -> Result<(Vec<String>, i64), CertError> {
    let parse_error = |detail: String| CertError::Parse { path: path.to_owned(), detail };
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|error| parse_error(error.to_string()))?;
    let not_after = cert.validity().not_after.timestamp();
    let san = cert.subject_alternative_name().map_err(|error| parse_error(error.to_string()))?;
    let names: Vec<String> = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(CertError::NoNames { path: path.to_owned() });
    }
    Ok((names, not_after))
}

/// A new ECDSA P-256 certificate for `names`, valid from a day ago for `SELF_SIGNED_VALIDITY`.
fn generate(names: &[String]) -> Result<(String, String), CertError> {
    let generate_error = |error: rcgen::Error| CertError::Generate { names: names.to_vec(), detail: error.to_string() };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate_error)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(generate_error)?;
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clients whose clock is behind.
    params.not_before = now - Duration::from_secs(24 * 3600);
    params.not_after = now + SELF_SIGNED_VALIDITY;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, names.first().map_or("berth", String::as_str));
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "berth self-signed");
    let cert = params.self_signed(&key).map_err(generate_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, then renames it over `path`, so a reader
/// never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let write_error = |source| CertError::Write { path: path.to_owned(), source };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(write_error)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(write_error)?;
    fs::rename(&tmp, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn self_signed_is_stored_reused_and_regenerated_when_names_change() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = self_signed(dir.path(), "web", &names(&["web.localhost", "Web.Example"]), &provider()).unwrap();
        assert_eq!(first.names, names(&["web.example", "web.localhost"]));
        assert!(!expires_within(first.not_after, RENEW_BEFORE));
        let mode = fs::metadata(dir.path().join("web.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let again = self_signed(dir.path(), "web", &names(&["web.localhost", "web.example"]), &provider()).unwrap();
        assert_eq!(again.key.cert, first.key.cert, "an unexpired certificate for the same names is reused");

        let other = self_signed(dir.path(), "web", &names(&["web.localhost"]), &provider()).unwrap();
        assert_ne!(other.key.cert, first.key.cert, "new names get a new certificate");
        assert_eq!(other.names, names(&["web.localhost"]));
    }

    #[test]
    fn an_expiring_self_signed_certificate_is_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(names(&["web.localhost"])).unwrap();
        params.not_after = time::OffsetDateTime::now_utc() + Duration::from_secs(10 * 24 * 3600);
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.path().join("web.crt"), cert.pem()).unwrap();
        fs::write(dir.path().join("web.key"), key.serialize_pem()).unwrap();
        let loaded = self_signed(dir.path(), "web", &names(&["web.localhost"]), &provider()).unwrap();
        assert_ne!(loaded.key.cert[0].as_ref(), cert.der().as_ref());
        assert!(!expires_within(loaded.not_after, RENEW_BEFORE));
    }

    #[test]
    fn user_files_with_a_foreign_key_or_bad_pem_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = self_signed(dir.path(), "a", &names(&["a.example"]), &provider()).unwrap();
        assert_eq!(a.names, names(&["a.example"]));
        self_signed(dir.path(), "b", &names(&["b.example"]), &provider()).unwrap();
        let mismatched = CertificateFiles { cert: dir.path().join("a.crt"), key: dir.path().join("b.key") };
        let error = load_user(&mismatched, &provider()).err().expect("a foreign key is refused").to_string();
        assert!(error.contains("b.key") && error.contains("does not belong"), "{error}");

        fs::write(dir.path().join("bad.crt"), "not a certificate").unwrap();
        let bad = CertificateFiles { cert: dir.path().join("bad.crt"), key: dir.path().join("a.key") };
        let error = load_user(&bad, &provider()).err().expect("garbage is refused").to_string();
        assert!(error.contains("bad.crt"), "{error}");
    }
}
