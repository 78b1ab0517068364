//! Cache keys: service, method, normalized host, path and query, and, for a response that names request
//! headers in `Vary`, the values of those headers.
//!
//! A response with `Vary` is stored under two keys: the primary key (without header values) holds a marker
//! with the header names, and the variant key (with this request's values) holds the response. A lookup
//! reads the primary key first and, finding a marker, the variant key for its own header values.

use http::header::{HeaderMap, HeaderName};
use http::{Method, Uri};

use crate::table::{normalize_host, prefix_matches};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) service: String,
    method: Method,
    host: String,
    /// Path and query as the client sent them.
    target: String,
    /// `None`: the primary key. `Some`: the values (all occurrences joined) of the `Vary` headers, in the
    /// order of the marker's names.
    vary: Option<Vec<Option<Vec<u8>>>>,
}

impl Key {
    /// The primary key of a request.
    pub(crate) fn primary(service: &str, method: &Method, host: Option<&str>, uri: &Uri) -> Key {
        Key {
            service: service.to_owned(),
            method: method.clone(),
            host: host.map(|host| normalize_host(host).into_owned()).unwrap_or_default(),
            target: uri.path_and_query().map_or("/", |target| target.as_str()).to_owned(),
            vary: None,
        }
    }

    /// The key of this request's variant of a response that varies on `names`.
    pub(crate) fn variant(&self, names: &[HeaderName], headers: &HeaderMap) -> Key {
        Key { vary: Some(vary_values(names, headers)), ..self.primary_key() }
    }

    pub(crate) fn primary_key(&self) -> Key {
        Key { vary: None, ..self.clone() }
    }

    /// Whether the key's path falls under `prefix`, on a segment boundary (`/a` covers `/a`, `/a/b`, `/a?x`).
    pub(crate) fn path_under(&self, prefix: &str) -> bool {
        prefix_matches(prefix, &self.target)
    }

    /// Approximate heap size, for the cache's weigher.
    pub(crate) fn weight(&self) -> usize {
        let vary: usize = self.vary.iter().flatten().map(|value| value.as_ref().map_or(8, |v| v.len() + 8)).sum();
        self.service.len() + self.host.len() + self.target.len() + vary
    }
}

/// The values of `names` in `headers`: every occurrence joined by `, `, or `None` when absent.
pub(crate) fn vary_values(names: &[HeaderName], headers: &HeaderMap) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|name| {
            let mut values = headers.get_all(name).iter().peekable();
            values.peek()?;
            let mut joined = Vec::new();
            for (idx, value) in values.enumerate() {
                if idx > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(value.as_bytes());
            }
            Some(joined)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn keys_normalize_the_host_and_keep_the_query() {
        let service = "web";
        let uri: Uri = "/a?x=1".parse().expect("valid uri");
        let key = Key::primary(service, &Method::GET, Some("Web.Localhost:8080"), &uri);
        assert_eq!(key, Key::primary(service, &Method::GET, Some("web.localhost"), &uri));
        let other: Uri = "/a?x=2".parse().expect("valid uri");
        assert_ne!(key, Key::primary(service, &Method::GET, Some("web.localhost"), &other));
        assert_ne!(key, Key::primary(service, &Method::HEAD, Some("web.localhost"), &uri));
        assert!(key.path_under("/a") && key.path_under("/") && !key.path_under("/ab"));
    }

    #[test]
    fn variants_differ_by_the_named_header_values_only() {
        let service = "web";
        let key = Key::primary(service, &Method::GET, None, &Uri::from_static("/"));
        let names = [HeaderName::from_static("accept-encoding")];
        let mut gzip = HeaderMap::new();
        gzip.insert("accept-encoding", HeaderValue::from_static("gzip"));
        gzip.insert("x-other", HeaderValue::from_static("1"));
        let mut gzip_too = HeaderMap::new();
        gzip_too.insert("accept-encoding", HeaderValue::from_static("gzip"));
        assert_eq!(key.variant(&names, &gzip), key.variant(&names, &gzip_too));
        assert_ne!(key.variant(&names, &gzip), key.variant(&names, &HeaderMap::new()));
        assert_ne!(key.variant(&names, &gzip), key);
        assert_eq!(key.variant(&names, &gzip).primary_key(), key);
    }
}
