//! The gateway's response cache through the real binary (issue #4): a route with `cache` in app.toml is
//! served from the cache, and `berth cache purge SERVICE [PATH]` empties it, all of it or one path.

use std::time::Duration;

use berth_test_support::{Daemon, http_request};

use crate::support::*;

const CACHED_ROUTE: &str = r#"
[[routes]]
path = "/"
cache = { max_age = "60s", stale_while_revalidate = "10s" }
"#;

/// `X-Cache` of a GET through the gateway to `web`.
fn x_cache(daemon: &Daemon, path: &str) -> String {
    let headers = [("Host", "web.localhost")];
    let (status, headers, _) = http_request(daemon.gateway_addr(), "GET", path, &headers, b"", Duration::from_secs(5))
        .expect("gateway answers");
    assert_eq!(status, 200, "{path}");
    assert!(headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("age")), "{path}: no Age in {headers:?}");
    headers
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("x-cache"))
        .map(|(_, value)| value)
        .unwrap_or_default()
}

#[test]
fn cache_purge_empties_a_services_cache_by_path_or_whole() {
    let (_root, daemon) = hello_daemon("web", 1, CACHED_ROUTE);
    for path in ["/ping", "/"] {
        assert_eq!(x_cache(&daemon, path), "MISS", "{path}");
        assert_eq!(x_cache(&daemon, path), "HIT", "{path}");
    }

    let out = daemon.cli(&["cache", "purge", "web", "/ping"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "web: purged 1 cached response under /ping\n");
    assert_eq!(x_cache(&daemon, "/ping"), "MISS");
    assert_eq!(x_cache(&daemon, "/"), "HIT", "another path keeps its entry");

    let purged = daemon.cli_json(&["cache", "purge", "web"]);
    assert_eq!(purged["service"], "web");
    assert_eq!(purged["path"], serde_json::Value::Null);
    assert_eq!(purged["purged"], 2, "{purged}");
    assert_eq!(x_cache(&daemon, "/"), "MISS");

    let unknown = daemon.cli(&["cache", "purge", "nope"]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && stderr.contains("no service named `nope`"), "{stderr}");
    let relative = daemon.cli(&["cache", "purge", "web", "ping"]);
    let stderr = String::from_utf8_lossy(&relative.stderr);
    assert!(!relative.status.success() && stderr.contains("does not start with `/`"), "{stderr}");
}
