//! Certificate choice by SNI: an exact name first, then a wildcard one level up, then the fallback
//! (also what a client without SNI gets). The map is immutable and swapped whole on every reload, so a
//! handshake never sees half an update.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Which certificate serves which name.
#[derive(Default)]
pub(crate) struct CertMap {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`: `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    fallback: Option<Arc<CertifiedKey>>,
}

/// The resolver shared by the HTTPS and QUIC listeners.
#[derive(Default, Debug)]
pub(crate) struct SniResolver {
    current: RwLock<Arc<CertMap>>,
}

impl CertMap {
    /// Serves `key` for `name` (`*.example.com` is a wildcard); a later insert for the same name wins.
    pub(crate) fn insert(&mut self, name: &str, key: Arc<CertifiedKey>) {
        let name = normalize(name);
        match name.strip_prefix("*.") {
            Some(parent) => self.wildcard.insert(parent.to_owned(), key),
            None => self.exact.insert(name, key),
        };
    }

    pub(crate) fn set_fallback(&mut self, key: Arc<CertifiedKey>) {
        self.fallback = Some(key);
    }

    /// Whether a certificate in the map names `name` (exactly or by wildcard); the fallback does not count.
    pub(crate) fn covers(&self, name: &str) -> bool {
        self.named(&normalize(name)).is_some()
    }

    pub(crate) fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        sni.and_then(|name| self.named(&normalize(name))).or_else(|| self.fallback.clone())
    }

    fn named(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = self.exact.get(name) {
            return Some(key.clone());
        }
        // A wildcard covers exactly one label.
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

impl std::fmt::Debug for CertMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertMap")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl SniResolver {
    pub(crate) fn replace(&self, map: CertMap) {
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(map);
    }

    pub(crate) fn current(&self) -> Arc<CertMap> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().lookup(client_hello.server_name())
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;

    use super::*;

    /// A stand-in certificate, told apart by its (fake) DER bytes.
    fn key(tag: u8) -> Arc<CertifiedKey> {
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(
            &rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map(|pair| rustls::pki_types::PrivateKeyDer::Pkcs8(pair.serialize_der().into()))
                .unwrap(),
        )
        .unwrap();
        Arc::new(CertifiedKey::new(vec![CertificateDer::from(vec![tag])], signer))
    }

    fn check(map: &CertMap, sni: Option<&str>, expected: Option<u8>) {
        let got = map.lookup(sni).map(|key| key.cert[0].as_ref()[0]);
        assert_eq!(got, expected, "lookup of {sni:?}");
    }

    #[test]
    fn exact_then_wildcard_then_fallback() {
        let mut map = CertMap::default();
        check(&map, Some("a.example.com"), None);
        map.insert("*.example.com", key(1));
        map.insert("api.example.com", key(2));
        map.insert("Web.Localhost", key(3));
        map.set_fallback(key(9));
        check(&map, Some("api.example.com"), Some(2));
        check(&map, Some("www.example.com"), Some(1));
        check(&map, Some("WWW.EXAMPLE.COM."), Some(1));
        check(&map, Some("web.localhost"), Some(3));
        check(&map, Some("a.b.example.com"), Some(9));
        check(&map, Some("example.com"), Some(9));
        check(&map, None, Some(9));
        assert!(map.covers("x.example.com"));
        assert!(!map.covers("other.test"));
    }
}
