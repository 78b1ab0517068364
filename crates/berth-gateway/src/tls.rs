//! HTTPS for the gateway: the public TLS configuration, the certificate store behind the SNI resolver
//! (user PEM files and self-signed certificates per service), its reloading, and the rustls server
//! configurations of the TLS and QUIC listeners (ring provider, TLS 1.2 + 1.3, ALPN).
//!
//! This is the one part of the gateway that reads files: certificates are operator input that must reload
//! without a restart. Loading never loses what is served: a file that fails to load keeps its previous
//! certificate, and the error names the file.

mod certs;
mod sni;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use tracing::{error, info};

use crate::table::RoutingTable;
use certs::{CertError, FileStamp, Loaded};
use sni::{CertMap, SniResolver};

/// TLS listener settings: user certificates and where self-signed ones are kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsConfig {
    /// User certificates (PEM chain + PEM key); each is served for the DNS names in its SAN
    /// (wildcards `*.example.com` too), picked by SNI.
    pub certificates: Vec<CertificateFiles>,
    /// Where self-signed certificates for hosts with no user certificate are generated and kept.
    pub self_signed_dir: PathBuf,
}

/// A certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How often user certificate files are checked for changes.
const POLL_EVERY: Duration = Duration::from_secs(2);
/// The label of the certificate for unknown names and clients without SNI.
const FALLBACK_LABEL: &str = "_fallback";
const FALLBACK_NAMES: &[&str] = &["localhost"];

/// The gateway's certificates. Cheap to share; every listener resolves through the same `SniResolver`.
pub(crate) struct Tls {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    resolver: Arc<SniResolver>,
    store: Mutex<Store>,
}

/// What is loaded, and from which file versions.
#[derive(Default)]
struct Store {
    /// Per entry of `TlsConfig::certificates`: the last good load and the file versions last tried.
    user: Vec<UserCert>,
    /// Per service: the names it must be served for (from the last routing table).
    services: BTreeMap<String, Vec<String>>,
    /// Self-signed certificates by service name (and `FALLBACK_LABEL`).
    self_signed: HashMap<String, Loaded>,
}

#[derive(Default)]
struct UserCert {
    loaded: Option<Loaded>,
    tried: Option<(Option<FileStamp>, Option<FileStamp>)>,
}

impl Tls {
    pub(crate) fn new(config: TlsConfig) -> Tls {
        let store =
            Store { user: config.certificates.iter().map(|_| UserCert::default()).collect(), ..Store::default() };
        Tls {
            config,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            resolver: Arc::new(SniResolver::default()),
            store: Mutex::new(store),
        }
    }

    /// Takes the services (and their names) of a new routing table, re-reads every user certificate and
    /// makes sure each service has a certificate for all its names.
    pub(crate) fn update(&self, table: &RoutingTable) {
        let services = table
            .services
            .iter()
            .map(|service| {
                let mut names = vec![format!("{}.localhost", service.name)];
                names.extend(service.hosts.iter().map(|host| host.to_ascii_lowercase()));
                (service.name.clone(), names)
            })
            .collect();
        let mut store = lock(&self.store);
        store.services = services;
        self.refresh(&mut store, true);
    }

    /// Loads what is missing or changed on disk; `force` re-reads user files even when unchanged.
    fn refresh(&self, store: &mut Store, force: bool) {
        for (files, user) in self.config.certificates.iter().zip(store.user.iter_mut()) {
            let stamps = (FileStamp::of(&files.cert), FileStamp::of(&files.key));
            if !force && user.tried == Some(stamps) {
                continue;
            }
            user.tried = Some(stamps);
            match certs::load_user(files, &self.provider) {
                Ok(loaded) => {
                    let changed = user.loaded.as_ref().is_none_or(|old| old.key.cert != loaded.key.cert);
                    if changed {
                        info!(cert = %files.cert.display(), names = ?loaded.names, "certificate loaded");
                    }
                    user.loaded = Some(loaded);
                }
                Err(load_error) => log_load_error(&load_error, user.loaded.is_some()),
            }
        }

        // User certificates come first: a service gets a self-signed one only for names they leave out.
        let mut map = CertMap::default();
        for loaded in store.user.iter().filter_map(|user| user.loaded.as_ref()) {
            for name in &loaded.names {
                map.insert(name, loaded.key.clone());
            }
        }
        let mut wanted: Vec<(String, Vec<String>)> = store
            .services
            .iter()
            .map(|(service, names)| {
                let uncovered: Vec<String> = names.iter().filter(|name| !map.covers(name)).cloned().collect();
                (service.clone(), uncovered)
            })
            .filter(|(_, uncovered)| !uncovered.is_empty())
            .collect();
        // Unknown names and clients without SNI get the first user certificate, as a web server's default
        // does, or a self-signed one when there is none.
        let first_user = store.user.iter().find_map(|user| user.loaded.as_ref()).map(|loaded| loaded.key.clone());
        if first_user.is_none() {
            wanted.push((FALLBACK_LABEL.to_owned(), FALLBACK_NAMES.iter().map(|name| name.to_string()).collect()));
        }
        let mut self_signed = HashMap::new();
        for (label, names) in wanted {
            let current = store.self_signed.remove(&label);
            let fresh = current.filter(|current| {
                let mut have = current.names.clone();
                have.sort();
                let mut want = names.clone();
                want.sort();
                want.dedup();
                have == want && !certs::expires_within(current.not_after, certs::RENEW_BEFORE)
            });
            let loaded = match fresh {
                Some(loaded) => Some(loaded),
                None => match certs::self_signed(&self.config.self_signed_dir, &label, &names, &self.provider) {
                    Ok(loaded) => {
                        info!(service = %label, names = ?loaded.names, "self-signed certificate ready");
                        Some(loaded)
                    }
                    Err(generate_error) => {
                        error!(service = %label, error = %generate_error, "no self-signed certificate; check that the certificate directory is writable");
                        None
                    }
                },
            };
            if let Some(loaded) = loaded {
                self_signed.insert(label, loaded);
            }
        }
        for (label, loaded) in &self_signed {
            if label == FALLBACK_LABEL {
                map.set_fallback(loaded.key.clone());
            } else {
                for name in &loaded.names {
                    map.insert(name, loaded.key.clone());
                }
            }
        }
        if let Some(first_user) = first_user {
            map.set_fallback(first_user);
        }
        store.self_signed = self_signed;
        self.resolver.replace(map);
    }

    /// Watches user certificate files (and self-signed expiry) until dropped.
    pub(crate) async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let tls = self.clone();
            // File reads and key generation block; keep them off the serving threads.
            let _ = tokio::task::spawn_blocking(move || tls.refresh(&mut lock(&tls.store), false)).await;
        }
    }

    /// Loads everything once, so that the first handshake has its certificates.
    pub(crate) fn load(&self) {
        self.refresh(&mut lock(&self.store), true);
    }

    /// The configuration of the TLS listener: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`.
    pub(crate) fn tcp_config(&self) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration of the QUIC listener: TLS 1.3 only (QUIC requires it), ALPN `h3`, no 0-RTT.
    pub(crate) fn quic_config(&self) -> Result<ServerConfig, rustls::Error> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.alpn_protocols = vec![b"h3".to_vec()];
        Ok(config)
    }
}

fn log_load_error(load_error: &CertError, kept_previous: bool) {
    if kept_previous {
        error!(error = %load_error, "certificate not reloaded; still serving the previous one; fix the file and it is picked up within seconds");
    } else {
        error!(error = %load_error, "certificate not loaded; its names get a self-signed certificate until the file is fixed");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
